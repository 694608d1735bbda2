"""The plain-Python face of the kernel modules, without importing Numba.

Importing anything in llamatool.kernels imports Numba and sets its compiler up, about half
a second, yet what a caller needs to lay a forward pass out is plain Python: the table
columns (LAYER_*), the namedtuples the pass takes (Net, Dims, Scratch, Activation), helpers
such as phases_per_call, and the Python driver `Forward`. `load("forward")` runs only those
top-level statements of llamatool/kernels/forward.py:

    kept    constants, namedtuples, functions and classes without decorators, imports
            from outside llamatool, Numba and llvmlite, and the names the kept code uses
            from sibling kernel modules (`from .attention import cache_positions`), taken
            from those modules' plain parts in turn
    left    compiled (decorated) functions, other imports, and assignments that need them

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


def _sibling(node: ast.stmt) -> str | None:
    """The kernel module a `from .x import ...` (or `from llamatool.kernels.x import ...`) reads."""
    if isinstance(node, ast.ImportFrom) and node.module:
        if node.level == 1 and "." not in node.module:
            return node.module
        if node.level == 0 and node.module.startswith("llamatool.kernels.") and node.module.count(".") == 2:
            return node.module.rsplit(".", 1)[1]
    return None


@lru_cache(maxsize=None)
def _steps(folder: Path, module: str) -> tuple:
    """What loading <folder>/<module>.py runs, in source order: ("run", code) for each kept
    statement, compiled on its own, and ("take", sibling, name, as) for each name that kept
    code uses from a sibling kernel module."""
    path = folder / f"{module}.py"
    tree = ast.parse(path.read_bytes(), str(path))
    kept = [node for node in tree.body if _kept(node)]
    used = {n.id for node in kept for n in ast.walk(node) if isinstance(n, ast.Name)}
    steps = []
    for node in tree.body:
        if node in kept:
            code = compile(ast.Module([node], type_ignores=[]), str(path), "exec", flags=_ANNOTATIONS, dont_inherit=True)
            steps.append(("run", code))
        elif _sibling(node):
            steps += [("take", _sibling(node), a.name, a.asname or a.name) for a in node.names if (a.asname or a.name) in used]
    return tuple(steps)


@lru_cache(maxsize=None)
def _plain(folder: Path, module: str) -> types.ModuleType:
    return load(module, folder=folder)


def load(module: str, folder: Path = KERNELS, **provide) -> types.ModuleType:
    """A fresh module holding the plain-Python part of <folder>/<module>.py (by default
    llamatool.kernels.<module>), with the names in `provide` defined first."""
    mod = types.ModuleType(f"llamatool.kernels.{module}")
    mod.__dict__.update(provide)
    for step in _steps(Path(folder), module):
        if step[0] == "take":
            _, sibling, name, bound = step
            value = getattr(_plain(Path(folder), sibling), name, None)
            if value is not None:  # compiled there: left out here too
                mod.__dict__[bound] = value
            continue
        try:
            exec(step[1], mod.__dict__)  # noqa: S102 - the package's own source
        except NameError:
            pass  # it needs something compiled: left out, as the compiled functions are
    return mod
