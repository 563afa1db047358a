"""The rotation-translation spec (torch-free): the full grid of transforms, or random tries.

Keys: ``spatial_limits=[3, 3, 30]`` (tx px, ty px, degrees), ``grid_granularity=[5, 5, 31]``
(points per axis of the grid: 775 transforms), ``random_tries=-1`` (negative: the grid; a
positive count: that many uniform random transforms per input). The attack is
``jobs.attacks.spatial.attack.RTAttack``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.attacks.balls import BudgetBall
from jobs.attacks.checks import check_keys, integer, spec_error, triple
from jobs.attacks.specbase import AttackSpec, Bounds, Description, num

if TYPE_CHECKING:
    from jobs.attacks.base import Attack


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

    def ball(self, radius: float | None = None) -> BudgetBall:
        self._no_radius(radius)
        return BudgetBall(self.spatial_limits)

    def transforms(self) -> int:
        """Transforms tried per input."""
        return math.prod(self.grid_granularity) if self.grid_mode else self.random_tries

    def describe(self) -> Description:
        tx, ty, angle = self.spatial_limits
        mode = "transforms" if self.grid_mode else "random transforms"
        return {**super().describe(), "label": "RT grid" if self.grid_mode else "RT random",
                "radius": f"±{num(tx)} px, ±{num(ty)} px, ±{num(angle)}°",
                "effort": f"{self.transforms()} {mode}"}

    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        from jobs.attacks.spatial.attack import RTAttack

        return RTAttack(self, bounds=bounds, eval_batch=eval_batch)
