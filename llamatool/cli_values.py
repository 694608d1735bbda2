"""Option values of plain types without pydantic: a fifth of a warm `llamatool run`.

typer (0.2x) converts every option value through a pydantic TypeAdapter that it builds on
first use: importing pydantic and building one adapter per option of the command (`run` has
nineteen) costs about 0.2 s before the command starts, as long as reading the model. Here
the common plain values are converted directly: a str, a decimal int or float, an option
already holding its type, a list of str (quantize's positional arguments) and paths
(through typer's own path check). Anything else (a value these strict patterns do not
take, a parser, min/max, choices, files, other lists) goes
to typer's pydantic adapter as before, so every accepted value and every error message is
typer's own. If typer's internals differ from what this expects, nothing is changed.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

_INT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _is_str_list(annotation) -> bool:
    return typing.get_origin(annotation) is list and typing.get_args(annotation) == (str,)


def _plain(annotation, value):
    """value as annotation (str, int, float, bool, a list of str), or None when typer must decide."""
    if _is_str_list(annotation):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        return list(value) if ok else None
    if annotation is str:
        return value if isinstance(value, str) else None
    if isinstance(value, annotation) and not (annotation is not bool and isinstance(value, bool)):
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # an int default of a float option
    if isinstance(value, str) and annotation in (int, float):
        text = value.strip()
        if (_INT if annotation is int else _FLOAT).fullmatch(text):
            return annotation(text)
    return None


def install() -> bool:
    """Route typer's conversion of plain option values through _plain; False if typer's
    internals are not the expected ones (typer then works as it always does)."""
    try:
        from typer import _coercion, _param_types, core

        typer_build = core.build_runtime_param
        base = _coercion.RuntimeParam
        coerce_path = _param_types.coerce_cli_path
    except (ImportError, AttributeError):
        return False
    if getattr(typer_build, "llamatool", False):
        return True

    class PlainRuntimeParam(base):
        def _coerce_value(self, value, param, ctx):
            info = self.parameter_info
            if self.annotation is Path:
                if info.path_type is None and (isinstance(value, Path) or (isinstance(value, str) and value)):
                    # typer's own checks; it would make the Path through pydantic unless it is one
                    return coerce_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
            else:
                plain = _plain(self.annotation, value)
                if plain is not None:
                    return plain
            return typer_build(self.descriptor)._coerce_value(value, param=param, ctx=ctx)

    def build(descriptor):
        info = descriptor.parameter_info
        simple = (
            descriptor.file_annotation is None
            and getattr(info, "parser", None) is None
            and getattr(info, "click_type", None) is None
            and getattr(info, "min", None) is None
            and getattr(info, "max", None) is None
            and not getattr(info, "clamp", False)
            and (descriptor.annotation in (str, int, float, bool, Path) or _is_str_list(descriptor.annotation))
        )
        if not simple:
            return typer_build(descriptor)
        param = PlainRuntimeParam(parameter_info=info, annotation=descriptor.annotation)
        object.__setattr__(param, "descriptor", descriptor)  # a frozen dataclass
        return param

    build.llamatool = True
    core.build_runtime_param = build
    return True
