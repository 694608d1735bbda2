"""The package declares what it imports and imports what it declares (pyproject's
`dependencies`, as installed metadata): an import of an undeclared package works here only
because something else pulled it in, and a declared one nobody imports is dead weight.
Sub-packages that only an extra installs (llamatool/server/: the `serve` extra) may also
import what that extra declares, and the extra declares only what they import."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

from .conftest import ROOT


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# sub-package of llamatool/ -> the extra that installs what it imports
EXTRA_PACKAGES = {"server": "serve"}


def _third_party_imports(folder: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """Top-level module imported by the files in folder (less skip) -> the first file importing it."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        if any(path.is_relative_to(s) for s in skip):
            continue
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


def _declared(extra: str | None = None) -> set[str]:
    """The core dependencies, or those of one extra."""
    requirements = metadata.requires("llamatool") or []
    marker = f'extra == "{extra}"'
    return {
        _normalized(re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0])
        for r in requirements
        if (marker in r if extra else "extra ==" not in r)
    }


def _distributions(imports: dict[str, str]) -> dict[str, str]:
    """Distribution name -> a file importing it."""
    distributions = metadata.packages_distributions()
    found = {}
    for module, where in imports.items():
        assert module in distributions, f"{where} imports {module}, which no installed distribution provides"
        for dist in distributions[module]:
            found[_normalized(dist)] = where
    return found


def test_imports_are_the_declared_dependencies():
    extra_folders = tuple(ROOT / "llamatool" / name for name in EXTRA_PACKAGES)
    imported = _distributions(_third_party_imports(ROOT / "llamatool", skip=extra_folders))
    declared = _declared()
    undeclared = {d: w for d, w in imported.items() if d not in declared}
    assert not undeclared, f"imported but not declared in pyproject's dependencies: {undeclared}"
    assert declared - set(imported) == set(), "declared but never imported by llamatool/"


def test_extras_declare_what_their_packages_import():
    core = _declared()
    for name, extra in EXTRA_PACKAGES.items():
        imported = _distributions(_third_party_imports(ROOT / "llamatool" / name))
        declared = _declared(extra)
        assert declared, f"pyproject has no `{extra}` extra"
        undeclared = {d: w for d, w in imported.items() if d not in core | declared}
        assert not undeclared, f"imported but declared neither in dependencies nor the `{extra}` extra: {undeclared}"
        assert declared - set(imported) == set(), f"the `{extra}` extra declares what llamatool/{name}/ never imports"
