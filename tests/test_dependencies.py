"""The package declares what it imports and imports what it declares (pyproject's
`dependencies`, as installed metadata): an import of an undeclared package works here only
because something else pulled it in, and a declared one nobody imports is dead weight."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

from .conftest import ROOT


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports() -> dict[str, str]:
    """Top-level module imported by llamatool/ -> the first file importing it."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "llamatool").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "llamatool" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _declared() -> set[str]:
    requirements = metadata.requires("llamatool") or []
    return {_normalized(re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0]) for r in requirements if "extra ==" not in r}


def test_imports_are_the_declared_dependencies():
    distributions = metadata.packages_distributions()
    imported = {}
    for module, where in _third_party_imports().items():
        assert module in distributions, f"{where} imports {module}, which no installed distribution provides"
        for dist in distributions[module]:
            imported[_normalized(dist)] = where
    declared = _declared()
    undeclared = {d: w for d, w in imported.items() if d not in declared}
    assert not undeclared, f"imported but not declared in pyproject's dependencies: {undeclared}"
    assert declared - set(imported) == set(), "declared but never imported by llamatool/"
