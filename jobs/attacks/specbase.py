"""The attack spec interface: what every attack type knows about itself, torch-free.

An attack type is a spec class (a frozen dataclass subclassing ``AttackSpec``, registered in
``jobs.attacks.spec.SPEC_TYPES``) and the attack class its ``build`` returns. The spec lives in
its package's ``spec`` module beside the attack (``jobs.attacks.pgd.spec`` / ``.attack``); spec
modules import no torch, so configs, suites and grids are validated without it, and only
``build`` loads the attack.

A spec is an object from the moment it is parsed until it is written: ``to_dict`` (the canonical
JSON form, every default explicit) is called only where it is stored (results metadata, config
files, content keys). What differs between kinds of attack is an attribute of the spec:
``minimum_norm`` (its search ignores the radius: it runs once and its copies at other radii
count its perturbations), ``components`` (an ensemble's parts, which the results name as what
broke an input) and ``describe()`` (how a report states it).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

if TYPE_CHECKING:
    from typing_extensions import Self

    from jobs.attacks.balls import Ball
    from jobs.attacks.base import Attack

#: An input box (lo, hi), or None for unbounded inputs (the toy data).
Bounds = tuple[float, float] | None

#: The families measured by a norm of delta, in the order specs and messages list them.
LP_FAMILIES = ("linf", "l2", "l1")
#: An MSD ball's radius: (family, epsilon).
Radius = tuple[str, float]

#: Relative slack of every size check: an attack's result against its budget, and the
#: evaluation's in-ball rule (float rounding of x0 + delta - x0).
BUDGET_RTOL = 1e-5


class Description(TypedDict, total=False):
    """How a report states an attack (written into the suite metadata of every results file,
    so the torch-free analysis reads it and never re-learns an attack type by its name)."""

    label: str  # what runs: "PGD", "SLIDE", "RT grid", "AutoAttack apgd-t", "foolbox ead_l1", ...
    radius: str  # "0.3", "±3 px, ±3 px, ±30°", an affine attack's parts
    effort: str  # steps, iterations, queries or transforms per input (per restart)
    restarts: str
    kind: str  # "bounded" | "minimum-norm" | "ensemble"
    components: list[str]  # an ensemble's parts, in the order it runs them


def num(x: float) -> str:
    """A number as reports print it (4 significant digits)."""
    return f"{x:.4g}"


class AttackSpec(ABC):
    """A validated, immutable attack spec (see the module docstring).

    ``type`` is its registry name and ``family`` its perturbation family (``linf``, ``rt``,
    ``linf+l1``, ...).
    """

    type: str
    family: str
    #: an ensemble's parts (AutoAttack's standard version), in the order it runs them
    components: ClassVar[tuple[str, ...]] = ()
    #: does the attack take only models affine in their input (``jobs.model_names``)?
    affine_models_only: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def parse(cls, spec: Mapping[str, Any], *, path: str) -> Self:
        """Validate a spec dict of this type and fill in defaults. Raises ``AttackSpecError``
        naming the key (prefixed with ``path``, e.g. ``attacks[0].``)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON-able spec dict (every default explicit), as results store it."""

    def scaled(self, factor: float) -> Self:
        """The same attack on its ball scaled by ``factor`` (radius, step size, RT limits), as
        budget points and ``start_small`` use it."""
        if not factor > 0:
            raise ValueError(f"scale factor = {factor}: must be > 0")
        return self._scaled(factor)

    @abstractmethod
    def _scaled(self, factor: float) -> Self:
        """``scaled`` for a factor already checked positive."""

    def with_restarts(self, reps: int) -> Self:
        """The same attack with ``reps`` random restarts; unchanged for types without them."""
        return self

    @abstractmethod
    def ball(self, radius: float | None = None) -> Ball:
        """The ball of the evaluation's in-ball rule; ``radius`` overrides an l_p radius (a
        ``ValueError`` for families without one)."""

    @abstractmethod
    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        """The attack (imports torch); ``eval_batch``: images per forward pass where many
        transforms are scored."""

    @property
    def minimum_norm(self) -> bool:
        """Does the search ignore the radius (an unbounded minimum-norm attack)? Its copies at
        larger radii then count its perturbations instead of running again."""
        return False

    def describe(self) -> Description:
        """How a report states this attack; a subclass fills in what it knows."""
        eps = getattr(self, "epsilon", math.nan)
        radius = num(eps) if isinstance(eps, int | float) and math.isfinite(eps) else "—"
        kind = "ensemble" if self.components else "minimum-norm" if self.minimum_norm else "bounded"
        out: Description = {"label": self.type, "radius": radius, "effort": "—", "restarts": "1",
                            "kind": kind}
        if self.components:
            out["components"] = list(self.components)
        return out

    def required_packages(self) -> tuple[str, ...]:
        """Import names of the libraries ``build`` needs beyond torch (checked without
        importing them when a suite is loaded)."""
        return ()

    def _no_radius(self, radius: float | None) -> None:
        if radius is not None:
            raise ValueError(f"only l_p families take a radius, not {self.family!r}")
