"""Attack specs: the paper's config keys, validated into immutable objects.

A spec is a plain dict using the keys of the public MultiRobustness config files, so configs
port directly. ``parse_spec`` checks it (every error names the key, the value and what is
allowed; unknown keys are rejected to catch typos) and fills in defaults. ``Spec.to_dict()``
gives the canonical JSON-able form stored in results.

Keys per ``type``:
- linf, l2: epsilon (required), k=100, a=2.5*epsilon/k, random_start=True, reps=1
- l1 (SLIDE): the same plus perc=99 (a number or a [lo, hi] range in [0, 100])
- rt: spatial_limits=[3, 3, 30], grid_granularity=[5, 5, 31], random_tries=-1 (negative: grid)
- affine: attacks=[spec, spec] (one linf spec and one l1 or rt spec), weight (beta in [0, 1] for
  attacks[0]; absent: drawn per example, Dirichlet(1, 1)), reps=1
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from jobs.errors import MpoError


class AttackSpecError(MpoError, ValueError):
    """An invalid attack spec; the message names the offending key."""


LP_TYPES = ("linf", "l2", "l1")
TYPES = (*LP_TYPES, "rt", "affine")
#: Attacks from optional libraries, validated in jobs.attacks.library (imported lazily).
LIBRARY_TYPES = ("foolbox", "autoattack")

_LP_KEYS = ("type", "epsilon", "k", "a", "random_start", "reps")
ALLOWED_KEYS: dict[str, tuple[str, ...]] = {
    "linf": _LP_KEYS,
    "l2": _LP_KEYS,
    "l1": (*_LP_KEYS, "perc"),
    "rt": ("type", "spatial_limits", "grid_granularity", "random_tries"),
    "affine": ("type", "attacks", "weight", "reps"),
}


@dataclass(frozen=True)
class LpSpec:
    type: str
    epsilon: float
    k: int
    a: float
    random_start: bool
    reps: int
    perc: float | tuple[float, float] | None = None  # l1 only

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "epsilon": self.epsilon,
            "k": self.k,
            "a": self.a,
            "random_start": self.random_start,
            "reps": self.reps,
        }
        if self.type == "l1":
            out["perc"] = list(self.perc) if isinstance(self.perc, tuple) else self.perc
        return out


@dataclass(frozen=True)
class RTSpec:
    spatial_limits: tuple[float, float, float]
    grid_granularity: tuple[int, int, int]
    random_tries: int

    type: str = "rt"

    @property
    def grid_mode(self) -> bool:
        return self.random_tries < 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "rt",
            "spatial_limits": list(self.spatial_limits),
            "grid_granularity": list(self.grid_granularity),
            "random_tries": self.random_tries,
        }


@dataclass(frozen=True)
class AffineSpec:
    attacks: tuple[LpSpec | RTSpec, LpSpec | RTSpec]
    weight: float | None
    reps: int

    type: str = "affine"

    @property
    def family(self) -> str:
        kinds = {s.type for s in self.attacks}
        return "linf+rt" if "rt" in kinds else "linf+l1"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "affine",
            "attacks": [s.to_dict() for s in self.attacks],
            "weight": self.weight,
            "reps": self.reps,
        }


Spec = LpSpec | RTSpec | AffineSpec


def _err(path: str, key: str, msg: str, value: Any) -> AttackSpecError:
    return AttackSpecError(f"attack spec key '{path}{key}': {msg}, got {value!r}")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _number(spec: dict, key: str, path: str, *, default: Any = ..., lo: float | None = None,
            lo_open: bool = False, hi: float | None = None) -> float:
    if key not in spec or spec[key] is None:
        if default is ...:
            raise AttackSpecError(f"attack spec key '{path}{key}': required for type {spec['type']!r}")
        return default
    v = spec[key]
    rng = (f"{'>' if lo_open else '>='} {lo}" if lo is not None else "") + (
        f"{' and ' if lo is not None else ''}<= {hi}" if hi is not None else ""
    )
    if not _is_number(v):
        raise _err(path, key, f"must be a finite number {rng}".rstrip(), v)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise _err(path, key, f"must be {rng}", v)
    if hi is not None and v > hi:
        raise _err(path, key, f"must be {rng}", v)
    return float(v)


def _int(spec: dict, key: str, path: str, *, default: int, lo: int | None = None) -> int:
    v = spec.get(key, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, int):
        raise _err(path, key, "must be an integer" + (f" >= {lo}" if lo is not None else ""), v)
    if lo is not None and v < lo:
        raise _err(path, key, f"must be an integer >= {lo}", v)
    return v


def _triple(spec: dict, key: str, path: str, default: tuple, *, integer: bool) -> tuple:
    v = spec.get(key, default)
    what = "positive integers" if integer else "non-negative numbers"
    if not isinstance(v, list | tuple) or len(v) != 3:
        raise _err(path, key, f"must be a list of 3 {what}", v)
    for item in v:
        ok = (isinstance(item, int) and not isinstance(item, bool) and item >= 1) if integer else (
            _is_number(item) and item >= 0
        )
        if not ok:
            raise _err(path, key, f"must be a list of 3 {what}", v)
    return tuple(int(i) for i in v) if integer else tuple(float(i) for i in v)


def _perc(spec: dict, path: str) -> float | tuple[float, float]:
    v = spec.get("perc", 99.0)
    msg = "must be a number in [0, 100] or a [lo, hi] range with 0 <= lo <= hi <= 100"
    if _is_number(v):
        if not 0 <= v <= 100:
            raise _err(path, "perc", msg, v)
        return float(v)
    if isinstance(v, list | tuple) and len(v) == 2 and all(_is_number(i) for i in v):
        lo, hi = float(v[0]), float(v[1])
        if not 0 <= lo <= hi <= 100:
            raise _err(path, "perc", msg, v)
        return (lo, hi)
    raise _err(path, "perc", msg, v)


def _check_keys(spec: dict, path: str) -> str:
    if not isinstance(spec, dict):
        raise AttackSpecError(f"attack spec {path or ''}must be a dict, got {type(spec).__name__}")
    typ = spec.get("type")
    if typ not in TYPES:
        raise _err(path, "type", f"must be one of {list(TYPES + LIBRARY_TYPES)}", typ)
    unknown = sorted(set(spec) - set(ALLOWED_KEYS[typ]))
    if unknown:
        raise AttackSpecError(
            f"attack spec key '{path}{unknown[0]}': unknown key for type {typ!r}; "
            f"allowed keys: {list(ALLOWED_KEYS[typ])}"
        )
    return typ


def parse_spec(spec: dict, *, path: str = "") -> Spec:
    """Validate a spec dict and return the immutable, defaults-filled spec object."""
    if isinstance(spec, dict) and spec.get("type") in LIBRARY_TYPES:
        from jobs.attacks.library import parse_library_spec

        return parse_library_spec(spec, path=path)
    typ = _check_keys(spec, path)
    if typ in LP_TYPES:
        eps = _number(spec, "epsilon", path, lo=0.0)
        k = _int(spec, "k", path, default=100, lo=1)
        a = _number(spec, "a", path, default=2.5 * eps / k, lo=0.0)
        rs = spec.get("random_start", True)
        if not isinstance(rs, bool):
            raise _err(path, "random_start", "must be true or false", rs)
        reps = _int(spec, "reps", path, default=1, lo=1)
        perc = _perc(spec, path) if typ == "l1" else None
        return LpSpec(type=typ, epsilon=eps, k=k, a=a, random_start=rs, reps=reps, perc=perc)
    if typ == "rt":
        limits = _triple(spec, "spatial_limits", path, (3.0, 3.0, 30.0), integer=False)
        gran = _triple(spec, "grid_granularity", path, (5, 5, 31), integer=True)
        tries = _int(spec, "random_tries", path, default=-1)
        if tries == 0:
            raise _err(path, "random_tries", "must be a positive count, or negative for the full grid", 0)
        return RTSpec(spatial_limits=limits, grid_granularity=gran, random_tries=tries)
    # affine
    subs = spec.get("attacks")
    if not isinstance(subs, list | tuple) or len(subs) != 2:
        raise _err(path, "attacks", "must be a list of exactly two attack specs", subs)
    parsed = tuple(parse_spec(s, path=f"{path}attacks[{i}].") for i, s in enumerate(subs))
    kinds = sorted(s.type for s in parsed)
    if kinds not in (["l1", "linf"], ["linf", "rt"]):
        raise _err(path, "attacks", "must combine one 'linf' spec with one 'l1' or 'rt' spec", [s.type for s in parsed])
    for i, s in enumerate(parsed):
        if isinstance(s, LpSpec):
            if s.reps != 1:
                raise _err(f"{path}attacks[{i}].", "reps", "must be 1 inside an affine attack "
                           "(set 'reps' on the affine spec)", s.reps)
            if s.epsilon <= 0:
                raise _err(f"{path}attacks[{i}].", "epsilon", "must be > 0 inside an affine attack", s.epsilon)
    weight = spec.get("weight")
    if weight is not None:
        weight = _number(spec, "weight", path, lo=0.0, hi=1.0)
    reps = _int(spec, "reps", path, default=1, lo=1)
    return AffineSpec(attacks=parsed, weight=weight, reps=reps)  # type: ignore[arg-type]
