"""The one validation machinery of mpo's input files: training configs, grids, suites, toy data.

Each file format is a tree of ``FrozenModel`` classes (pydantic: unknown fields refused,
instances immutable); ``format_validation_error`` turns pydantic's errors into one line each
that names the file, the dotted field (``attacks[0].kind``), the value given and what is allowed
(the allowed field names, for an unknown field).
"""

from __future__ import annotations

import re
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


#: pydantic's names of union members and constrained types in an error's location
#: (``list[constrained-float]``, ``function-after[...]``): not fields, so never shown.
_TAG = re.compile(r"^[A-Za-z_-]+\[.*\]$|^constrained-")


def _is_tag(part: int | str) -> bool:
    return isinstance(part, str) and bool(_TAG.match(part))


def _union_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The errors to show, pydantic's union members' tags dropped from every location. Where a
    value matched no member of a union, the members that refused its very type ("should be a
    valid dictionary" for a list) are left out when another member says more; when all refused
    the type, they become one error ("a valid list or a valid dictionary")."""
    out: list[dict[str, Any]] = []
    by_union: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for e in errors:
        loc = tuple(e["loc"])
        first = next((i for i, p in enumerate(loc) if _is_tag(p)), None)
        clean = {**e, "loc": tuple(p for p in loc if not _is_tag(p))}
        if first is None:
            out.append(clean)
        else:
            by_union.setdefault(loc[:first], []).append(clean)
    for members in by_union.values():
        specific = [e for e in members if not str(e["type"]).endswith("_type")]
        if specific:
            out += specific
        else:
            msgs = " or ".join(dict.fromkeys(e["msg"].removeprefix("Input should be ") for e in members))
            out.append({**members[0], "msg": f"Input should be {msgs}"})
    return out


def format_validation_error(err: ValidationError, *, source: str, model: type[BaseModel]) -> str:
    """One line per error: ``source`` (the file), the dotted field, the value and what is allowed."""
    lines = []
    for e in _union_errors(list(err.errors())):
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
