"""The one validation machinery of mpo's input files: training configs, grids, suites, toy data.

Each file format is a tree of ``FrozenModel`` classes (pydantic: unknown fields refused,
instances immutable); ``format_validation_error`` turns pydantic's errors into one line each
that names the file, the dotted field (``attacks[0].kind``), the value given and what is allowed
(the allowed field names, for an unknown field).
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class FrozenModel(BaseModel):
    """Base of every validated input model: unknown fields are errors, instances immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _unwrap(annotation: Any) -> Any:
    """The type inside ``Annotated[...]`` and ``X | None``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return annotation


def _allowed_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str] | None:
    """The field names allowed at ``loc`` (the parent of an extra field), or None if unknown."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return None
            current = info.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]  # the key is a free name: skip it
        elif typing.get_origin(current) is list:
            current = typing.get_args(current)[0]  # the index: skip it
        else:
            return None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def field_path(loc: tuple[int | str, ...]) -> str:
    """``("attacks", 0, "kind")`` -> ``attacks[0].kind``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{part}"
    return out or "(top level)"


def format_validation_error(err: ValidationError, *, source: str, model: type[BaseModel]) -> str:
    """One line per error: ``source`` (the file), the dotted field, the value and what is allowed."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = field_path(loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, loc[:-1])
            extra = f"; allowed fields: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{source}: field '{where}': unknown field{extra}")
        elif e["type"] == "missing":
            lines.append(f"{source}: field '{where}': required but missing")
        elif isinstance(e.get("input"), dict | list):  # a whole section: the message says what
            lines.append(f"{source}: field '{where}': {msg}")
        else:
            lines.append(f"{source}: field '{where}' = {e.get('input')!r}: {msg}")
    return "\n".join(lines)
