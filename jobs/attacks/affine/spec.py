"""The affine adversary's spec (torch-free): a beta-share of one ball with the rest of another.

Keys: ``attacks=[spec, spec]`` (one linf spec and one l1 or rt spec), ``weight`` (beta in [0, 1]
for attacks[0]; absent: drawn per example, uniform), ``draws=1`` (beta draws, each only on the
inputs still robust), ``reps=1`` (random restarts at each draw's beta; for linf+rt, of the PGD
from each transform). The attacks are in ``jobs.attacks.affine.attack``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.attacks.balls import BudgetBall, GaugeBall
from jobs.attacks.checks import AttackSpecError, check_keys, integer, number, spec_error
from jobs.attacks.pgd.spec import LpSpec
from jobs.attacks.spatial.spec import RTSpec
from jobs.attacks.specbase import AttackSpec, Bounds, Description

if TYPE_CHECKING:
    from jobs.attacks.balls import Ball
    from jobs.attacks.base import Attack

#: The spec classes of the parts, by type (an affine attack combines linf with l1 or rt).
PARTS: dict[str, type[LpSpec] | type[RTSpec]] = {"linf": LpSpec, "l2": LpSpec, "l1": LpSpec,
                                                "rt": RTSpec}
_COMBINE = "must combine one 'linf' spec with one 'l1' or 'rt' spec"


def _parts(subs: list[object] | tuple[object, ...], path: str) -> tuple[LpSpec | RTSpec, ...]:
    for i, s in enumerate(subs):
        if not isinstance(s, Mapping):
            raise AttackSpecError(f"attack spec {path}attacks[{i}].must be a dict, got "
                                  f"{type(s).__name__}")
    types = [s.get("type") for s in subs]  # type: ignore[union-attr]
    if any(t not in PARTS for t in types):
        raise spec_error(path, "attacks", _COMBINE, types)
    return tuple(PARTS[t].parse(s, path=f"{path}attacks[{i}].")  # type: ignore[arg-type]
                 for i, (t, s) in enumerate(zip(types, subs, strict=True)))


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
        parsed = _parts(subs, path)
        kinds = sorted(s.type for s in parsed)
        if kinds not in (["l1", "linf"], ["linf", "rt"]):
            raise spec_error(path, "attacks", _COMBINE, [s.type for s in parsed])
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

    def describe(self) -> Description:
        parts = [p.describe() for p in self.attacks]
        return {**super().describe(),
                "label": "affine (" + " + ".join(p["label"] for p in parts) + ")",
                "radius": " + ".join(f"{s.type} {p['radius']}"
                                     for s, p in zip(self.attacks, parts, strict=True)),
                "effort": " + ".join(p["effort"] for p in parts), "restarts": str(self.reps)}

    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        from jobs.attacks.affine.attack import AffineLinfL1, AffineLinfRT

        cls = AffineLinfRT if self.family == "linf+rt" else AffineLinfL1
        return cls(self, bounds=bounds, eval_batch=eval_batch)
