"""The exact attack's spec (torch-free): ``{type: exact, norm: linf | l2 | l1, epsilon: E}``.

For a model that is affine in its input (mpo's ``linear`` model, the classifiers of the paper's
Section 2), the largest margin any perturbation of the ball (intersected with the input box)
reaches is a closed form, so the attack finds the worst case itself: an input it leaves robust
cannot be fooled inside the ball by any attack (AutoAttack's included). On any other model the
attack refuses (``jobs.attacks.exact.attack``). It takes no steps, restarts or random draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from jobs.attacks.balls import LpBall
from jobs.attacks.checks import check_keys, number, spec_error
from jobs.attacks.specbase import LP_FAMILIES, AttackSpec, Bounds, Description, num

if TYPE_CHECKING:
    from jobs.attacks.base import Attack


@dataclass(frozen=True)
class ExactSpec(AttackSpec):
    """The exact worst case of an affine model on the ``norm`` ball of radius ``epsilon``."""

    norm: str
    epsilon: float
    type: str = "exact"
    affine_models_only: ClassVar[bool] = True

    @property
    def family(self) -> str:
        return self.norm

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, path: str) -> ExactSpec:
        check_keys(spec, path, ("type", "norm", "epsilon"), "type 'exact'")
        norm = spec.get("norm")
        if norm not in LP_FAMILIES:
            raise spec_error(path, "norm", f"must be one of {list(LP_FAMILIES)}", norm)
        return cls(norm=norm, epsilon=number(spec, "epsilon", path, lo=0.0))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "norm": self.norm, "epsilon": self.epsilon}

    def _scaled(self, factor: float) -> ExactSpec:
        return dataclasses.replace(self, epsilon=self.epsilon * factor)

    def ball(self, radius: float | None = None) -> LpBall:
        return LpBall(self.norm, self.epsilon if radius is None else float(radius))

    def describe(self) -> Description:
        return {**super().describe(), "label": "exact (affine model)", "radius": num(self.epsilon),
                "effort": "closed form", "restarts": "—"}

    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        from jobs.attacks.exact.attack import ExactAttack

        return ExactAttack(self, bounds=bounds)
