"""Attack specs: the paper's config keys, validated into immutable objects, and the registry.

A spec is a plain dict using the keys of the public MultiRobustness config files, so configs
port directly. ``parse_spec`` looks its ``type`` up in ``SPEC_TYPES`` and lets that class check
it (every error names the key, the value and what is allowed; unknown keys are rejected to catch
typos) and fill in defaults. ``AttackSpec.to_dict()`` gives the canonical JSON-able form stored
in results; ``build`` makes the attack.

Keys per ``type``:
- linf, l2: epsilon (required), k=100, a=2.5*epsilon/k, random_start=True, reps=1
- l1 (SLIDE): the same plus perc=99 (a number or a [lo, hi] range in [0, 100])
- rt: spatial_limits=[3, 3, 30], grid_granularity=[5, 5, 31], random_tries=-1 (negative: grid)
- affine: attacks=[spec, spec] (one linf spec and one l1 or rt spec), weight (beta in [0, 1] for
  attacks[0]; absent: drawn per example, Dirichlet(1, 1)), draws=1 (beta draws, each only on the
  inputs still robust), reps=1 (random restarts at each draw's beta; for linf+rt, of the PGD from
  each transform)
- msd: attacks=[l_p spec, l_p spec, ...], k=100, reps=1, random_start=True: see ``jobs.attacks.msd``
- foolbox, autoattack: see ``jobs.attacks.library_spec``

Adding an attack type: a spec class (an ``AttackSpec``), the attack class its ``build`` returns
(an ``Attack``), and its entry in ``SPEC_TYPES``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.attacks.affine import AffineLinfL1, AffineLinfRT
from jobs.attacks.base import AttackSpec, Bounds
from jobs.attacks.checks import (
    AttackSpecError,
    check_keys,
    flag,
    integer,
    is_number,
    number,
    spec_error,
    triple,
)
from jobs.attacks.library_spec import LibrarySpec
from jobs.attacks.msd import MsdSpec
from jobs.attacks.norms import LP_FAMILIES, BudgetBall, GaugeBall, LpBall
from jobs.attacks.pgd import PGDAttack
from jobs.attacks.spatial import RTAttack

if TYPE_CHECKING:
    from jobs.attacks.base import Attack
    from jobs.attacks.norms import Ball

__all__ = [
    "LP_FAMILIES",
    "SPEC_TYPES",
    "AffineSpec",
    "AttackSpec",
    "AttackSpecError",
    "LibrarySpec",
    "LpSpec",
    "RTSpec",
    "parse_spec",
]


def _perc(spec: Mapping[str, Any], path: str) -> float | tuple[float, float]:
    v = spec.get("perc", 99.0)
    msg = "must be a number in [0, 100] or a [lo, hi] range with 0 <= lo <= hi <= 100"
    if is_number(v):
        if not 0 <= v <= 100:
            raise spec_error(path, "perc", msg, v)
        return float(v)
    if isinstance(v, list | tuple) and len(v) == 2 and all(is_number(i) for i in v):
        lo, hi = float(v[0]), float(v[1])
        if not 0 <= lo <= hi <= 100:
            raise spec_error(path, "perc", msg, v)
        return (lo, hi)
    raise spec_error(path, "perc", msg, v)


@dataclass(frozen=True)
class LpSpec(AttackSpec):
    """PGD on an l_p ball: l_inf and l_2 (steepest ascent), l_1 (SLIDE, with ``perc``)."""

    type: str
    epsilon: float
    k: int
    a: float
    random_start: bool
    reps: int
    perc: float | tuple[float, float] | None = None  # l1 only

    @property
    def family(self) -> str:
        return self.type

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, path: str) -> LpSpec:
        typ = spec["type"]
        keys = ("type", "epsilon", "k", "a", "random_start", "reps") + (("perc",) if typ == "l1" else ())
        check_keys(spec, path, keys, f"type {typ!r}")
        eps = number(spec, "epsilon", path, lo=0.0)
        k = integer(spec, "k", path, default=100, lo=1)
        a = number(spec, "a", path, default=2.5 * eps / k, lo=0.0)
        random_start = flag(spec, "random_start", path, default=True)
        reps = integer(spec, "reps", path, default=1, lo=1)
        perc = _perc(spec, path) if typ == "l1" else None
        return cls(type=typ, epsilon=eps, k=k, a=a, random_start=random_start, reps=reps, perc=perc)

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

    def _scaled(self, factor: float) -> LpSpec:
        # the step keeps its ratio to the radius
        return dataclasses.replace(self, epsilon=self.epsilon * factor, a=self.a * factor)

    def with_restarts(self, reps: int) -> LpSpec:
        return dataclasses.replace(self, reps=reps)

    def ball(self, radius: float | None = None) -> Ball:
        return LpBall(self.family, self.epsilon if radius is None else float(radius))

    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        return PGDAttack(self, bounds=bounds)


@dataclass(frozen=True)
class RTSpec(AttackSpec):
    """Rotation-translation: the full grid of transforms, or ``random_tries`` random ones."""

    spatial_limits: tuple[float, float, float]
    grid_granularity: tuple[int, int, int]
    random_tries: int

    type: str = "rt"
    family = "rt"

    @property
    def grid_mode(self) -> bool:
        return self.random_tries < 0

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, path: str) -> RTSpec:
        check_keys(spec, path, ("type", "spatial_limits", "grid_granularity", "random_tries"), "type 'rt'")
        limits = triple(spec, "spatial_limits", path, (3.0, 3.0, 30.0), integer=False)
        gran = triple(spec, "grid_granularity", path, (5, 5, 31), integer=True)
        tries = integer(spec, "random_tries", path, default=-1)
        if tries == 0:
            raise spec_error(path, "random_tries", "must be a positive count, or negative for the full grid", 0)
        return cls(spatial_limits=limits, grid_granularity=gran, random_tries=tries)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "rt",
            "spatial_limits": list(self.spatial_limits),
            "grid_granularity": list(self.grid_granularity),
            "random_tries": self.random_tries,
        }

    def _scaled(self, factor: float) -> RTSpec:
        tx, ty, angle = (v * factor for v in self.spatial_limits)
        return dataclasses.replace(self, spatial_limits=(tx, ty, angle))

    def ball(self, radius: float | None = None) -> Ball:
        self._no_radius(radius)
        return BudgetBall(self.spatial_limits)

    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        return RTAttack(self, bounds=bounds, eval_batch=eval_batch)


@dataclass(frozen=True)
class AffineSpec(AttackSpec):
    """The affine adversary: a beta-share of one ball compounded with the rest of another."""

    attacks: tuple[LpSpec | RTSpec, LpSpec | RTSpec]
    weight: float | None
    reps: int
    draws: int = 1

    type: str = "affine"

    @property
    def family(self) -> str:
        kinds = {s.type for s in self.attacks}
        return "linf+rt" if "rt" in kinds else "linf+l1"

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, path: str) -> AffineSpec:
        check_keys(spec, path, ("type", "attacks", "weight", "draws", "reps"), "type 'affine'")
        subs = spec.get("attacks")
        if not isinstance(subs, list | tuple) or len(subs) != 2:
            raise spec_error(path, "attacks", "must be a list of exactly two attack specs", subs)
        parsed = tuple(parse_spec(s, path=f"{path}attacks[{i}].") for i, s in enumerate(subs))
        kinds = sorted(s.type for s in parsed)
        if kinds not in (["l1", "linf"], ["linf", "rt"]):
            raise spec_error(path, "attacks", "must combine one 'linf' spec with one 'l1' or 'rt' spec",
                             [s.type for s in parsed])
        for i, s in enumerate(parsed):
            if isinstance(s, LpSpec):
                if s.reps != 1:
                    raise spec_error(f"{path}attacks[{i}].", "reps", "must be 1 inside an affine attack "
                                     "(set 'reps' on the affine spec)", s.reps)
                if s.epsilon <= 0:
                    raise spec_error(f"{path}attacks[{i}].", "epsilon", "must be > 0 inside an affine "
                                     "attack", s.epsilon)
        weight = spec.get("weight")
        if weight is not None:
            weight = number(spec, "weight", path, lo=0.0, hi=1.0)
        reps = integer(spec, "reps", path, default=1, lo=1)
        draws = integer(spec, "draws", path, default=1, lo=1)
        return cls(attacks=parsed, weight=weight, reps=reps, draws=draws)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "affine",
            "attacks": [s.to_dict() for s in self.attacks],
            "weight": self.weight,
            "draws": self.draws,
            "reps": self.reps,
        }

    def _scaled(self, factor: float) -> AffineSpec:
        first, second = (s.scaled(factor) for s in self.attacks)
        return dataclasses.replace(self, attacks=(first, second))

    def with_restarts(self, reps: int) -> AffineSpec:
        return dataclasses.replace(self, reps=reps)

    def part(self, typ: str) -> LpSpec | RTSpec:
        """The component of type ``typ`` (``linf``, ``l1`` or ``rt``)."""
        return next(s for s in self.attacks if s.type == typ)

    def ball(self, radius: float | None = None) -> Ball:
        self._no_radius(radius)
        # Two affine attacks share a ball when their components are the same attacks.
        key = json.dumps([s.to_dict() for s in self.attacks], sort_keys=True)
        if self.family == "linf+rt":
            return BudgetBall(key)
        lin, l1 = self.part("linf"), self.part("l1")
        assert isinstance(lin, LpSpec) and isinstance(l1, LpSpec)
        return GaugeBall(lin.epsilon, l1.epsilon, key)

    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        cls = AffineLinfRT if self.family == "linf+rt" else AffineLinfL1
        return cls(self, bounds=bounds, eval_batch=eval_batch)


#: Every attack type: its ``type`` name -> the spec class that parses, scales and builds it.
SPEC_TYPES: dict[str, type[AttackSpec]] = {
    **dict.fromkeys(LP_FAMILIES, LpSpec),
    "rt": RTSpec,
    "affine": AffineSpec,
    "msd": MsdSpec,
    "foolbox": LibrarySpec,
    "autoattack": LibrarySpec,
}


def parse_spec(spec: object, *, path: str = "") -> AttackSpec:
    """Validate a spec dict (any value read from a file) and return the immutable,
    defaults-filled spec object; a parsed spec is returned as it is."""
    if isinstance(spec, AttackSpec):
        return spec
    if not isinstance(spec, Mapping):
        raise AttackSpecError(f"attack spec {path or ''}must be a dict, got {type(spec).__name__}")
    typ = spec.get("type")
    if typ not in SPEC_TYPES:
        raise spec_error(path, "type", f"must be one of {list(SPEC_TYPES)}", typ)
    return SPEC_TYPES[typ].parse(spec, path=path)
