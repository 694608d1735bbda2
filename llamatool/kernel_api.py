"""The plain-Python face of the kernel modules, without importing Numba.

Importing anything in llamatool.kernels imports Numba and sets its compiler up, about half
a second, yet what a caller needs to lay a forward pass out is plain Python: the table
columns (LAYER_*), the namedtuples the pass takes (Net, Dims, Scratch, Activation), helpers
such as phases_per_call, and the Python driver `Forward`. `load("forward")` runs only those
top-level statements of llamatool/kernels/forward.py:

    kept    constants, namedtuples, functions and classes without decorators, and imports
            from outside llamatool, Numba and llvmlite
    left    compiled (decorated) functions, relative imports, and assignments that need them

So they come from the one source the kernels are compiled from: a field added to a
namedtuple there is a field here. Names the kept code uses but that were left out (the
compiled `forward_worker` the driver calls) are passed in as `provide`.
"""

from __future__ import annotations

import __future__
import ast
import types
from functools import lru_cache
from pathlib import Path

KERNELS = Path(__file__).resolve().parent / "kernels"
_NOT_IMPORTED = ("llamatool", "numba", "llvmlite", "__future__")
_ANNOTATIONS = __future__.annotations.compiler_flag  # annotations stay strings, as in the source


def _kept(node: ast.stmt) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return not node.decorator_list
    if isinstance(node, ast.Import):
        return all(alias.name.split(".")[0] not in _NOT_IMPORTED for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and (node.module or "").split(".")[0] not in _NOT_IMPORTED
    return isinstance(node, (ast.Assign, ast.AnnAssign))


@lru_cache(maxsize=None)
def _statements(module: str) -> tuple:
    """The kept statements of kernels/<module>.py, each compiled on its own."""
    path = KERNELS / f"{module}.py"
    tree = ast.parse(path.read_bytes(), str(path))
    return tuple(
        compile(ast.Module([node], type_ignores=[]), str(path), "exec", flags=_ANNOTATIONS, dont_inherit=True)
        for node in tree.body
        if _kept(node)
    )


def load(module: str, **provide) -> types.ModuleType:
    """A fresh module holding the plain-Python part of llamatool.kernels.<module>, with the
    names in `provide` defined first."""
    mod = types.ModuleType(f"llamatool.kernels.{module}")
    mod.__dict__.update(provide)
    for code in _statements(module):
        try:
            exec(code, mod.__dict__)  # noqa: S102 - the package's own source
        except NameError:
            pass  # it needs something compiled: left out, as the compiled functions are
    return mod
