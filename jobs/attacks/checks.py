"""Checks of attack-spec dicts, shared by every spec class (``jobs.attacks.spec``,
``jobs.attacks.library_spec``).

Each check reads one key of a spec dict and either returns its value (or the default) or raises
``AttackSpecError`` naming the key with its path (``attacks[1].epsilon`` inside an affine spec),
what is allowed, and the value given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from jobs.errors import MpoError

#: A spec dict as read from YAML or JSON.
SpecDict = Mapping[str, Any]


class AttackSpecError(MpoError, ValueError):
    """An invalid attack spec; the message names the offending key."""


def spec_error(path: str, key: str, msg: str, value: object) -> AttackSpecError:
    return AttackSpecError(f"attack spec key '{path}{key}': {msg}, got {value!r}")


def is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check_keys(spec: SpecDict, path: str, allowed: Sequence[str], owner: str) -> None:
    """Refuse keys outside ``allowed`` (typos): ``owner`` says whose keys they are."""
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise AttackSpecError(
            f"attack spec key '{path}{unknown[0]}': unknown key for {owner}; "
            f"allowed keys: {list(allowed)}"
        )


def number(spec: SpecDict, key: str, path: str, *, default: Any = ..., lo: float | None = None,
           lo_open: bool = False, hi: float | None = None) -> float:
    """A finite number in [lo, hi] (``lo_open``: > lo); required when ``default`` is not given."""
    if key not in spec or spec[key] is None:
        if default is ...:
            raise AttackSpecError(f"attack spec key '{path}{key}': required for type {spec['type']!r}")
        return default
    v = spec[key]
    rng = (f"{'>' if lo_open else '>='} {lo}" if lo is not None else "") + (
        f"{' and ' if lo is not None else ''}<= {hi}" if hi is not None else ""
    )
    if not is_number(v):
        raise spec_error(path, key, f"must be a finite number {rng}".rstrip(), v)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise spec_error(path, key, f"must be {rng}", v)
    if hi is not None and v > hi:
        raise spec_error(path, key, f"must be {rng}", v)
    return float(v)


def integer(spec: SpecDict, key: str, path: str, *, default: int, lo: int | None = None) -> int:
    v = spec.get(key, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, int):
        raise spec_error(path, key, "must be an integer" + (f" >= {lo}" if lo is not None else ""), v)
    if lo is not None and v < lo:
        raise spec_error(path, key, f"must be an integer >= {lo}", v)
    return v


def flag(spec: SpecDict, key: str, path: str, *, default: bool) -> bool:
    v = spec.get(key, default)
    if not isinstance(v, bool):
        raise spec_error(path, key, "must be true or false", v)
    return v


def choice(spec: SpecDict, key: str, path: str, *, choices: Sequence[str], default: str) -> str:
    v = spec.get(key, default)
    if v not in choices:
        raise spec_error(path, key, f"must be one of {list(choices)}", v)
    return v


def triple(spec: SpecDict, key: str, path: str, default: tuple[float, float, float], *,
           integer: bool) -> tuple:
    """Three positive integers (``integer``) or three non-negative numbers."""
    v = spec.get(key, default)
    what = "positive integers" if integer else "non-negative numbers"
    if not isinstance(v, list | tuple) or len(v) != 3:
        raise spec_error(path, key, f"must be a list of 3 {what}", v)
    for item in v:
        ok = (isinstance(item, int) and not isinstance(item, bool) and item >= 1) if integer else (
            is_number(item) and item >= 0
        )
        if not ok:
            raise spec_error(path, key, f"must be a list of 3 {what}", v)
    return tuple(int(i) for i in v) if integer else tuple(float(i) for i in v)
