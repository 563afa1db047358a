"""foolbox 3's attacks (torch-free spec): minimum-norm gradient attacks and decision-based ones.

    {"type": "foolbox", "attack": "boundary_l2", "epsilon": 2.0, "steps": 5000}

``attack`` is one of ``FOOLBOX_ATTACKS`` (its family is in the name: ``cw_l2``, ``ead_l1``,
``boundary_l2``, ``pointwise_l1``, ``hsj_linf``, ``hsj_l2``, ``fmn_linf``, ``fmn_l2``,
``fmn_l1``), with the attack's parameters as foolbox names them (defaults: foolbox's own);
``init_steps`` for the decision-based ones (steps of the noise attack that finds their starting
points). All are unbounded minimum-norm attacks: the evaluation's in-ball rule decides whether
their perturbation counts at a radius. The attack is ``jobs.attacks.foolbox.attack.FoolboxAttack``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from jobs.attacks.library.spec import LibraryEntry, LibrarySpec, Param
from jobs.attacks.specbase import Bounds, Description

if TYPE_CHECKING:
    from jobs.attacks.base import Attack

_INIT = {"init_steps": Param("int", 50, lo=1)}
_FMN = {
    "steps": Param("int", 100, lo=1),
    "max_stepsize": Param("float", 1.0, lo=0.0, lo_open=True),
    "gamma": Param("float", 0.05, lo=0.0, lo_open=True),
    "binary_search_steps": Param("int", 10, lo=1),
}
_HSJ = {
    "steps": Param("int", 64, lo=1),
    "initial_gradient_eval_steps": Param("int", 100, lo=1),
    "max_gradient_eval_steps": Param("int", 10000, lo=1),
    "gamma": Param("float", 1.0, lo=0.0, lo_open=True),
    "stepsize_search": Param("choice", "geometric_progression",
                             choices=("geometric_progression", "grid_search")),
    **_INIT,
}

FOOLBOX_ATTACKS: dict[str, LibraryEntry] = {
    "cw_l2": LibraryEntry("l2", False, False, {
        "binary_search_steps": Param("int", 9, lo=1),
        "steps": Param("int", 10000, lo=1),
        "stepsize": Param("float", 0.01, lo=0.0, lo_open=True),
        "confidence": Param("float", 0.0, lo=0.0),
        "initial_const": Param("float", 0.001, lo=0.0, lo_open=True),
        "abort_early": Param("bool", True),
    }),
    "ead_l1": LibraryEntry("l1", False, False, {
        "binary_search_steps": Param("int", 9, lo=1),
        "steps": Param("int", 10000, lo=1),
        "initial_stepsize": Param("float", 0.01, lo=0.0, lo_open=True),
        "confidence": Param("float", 0.0, lo=0.0),
        "initial_const": Param("float", 0.001, lo=0.0, lo_open=True),
        "regularization": Param("float", 0.01, lo=0.0),
        "decision_rule": Param("choice", "EN", choices=("EN", "L1")),
        "abort_early": Param("bool", True),
    }),
    "boundary_l2": LibraryEntry("l2", True, False, {
        "steps": Param("int", 25000, lo=1),
        "spherical_step": Param("float", 0.01, lo=0.0, lo_open=True),
        "source_step": Param("float", 0.01, lo=0.0, lo_open=True),
        "source_step_convergance": Param("float", 1e-7, lo=0.0),
        "step_adaptation": Param("float", 1.5, lo=1.0, lo_open=True),
        "update_stats_every_k": Param("int", 10, lo=1),
        **_INIT,
    }),
    "pointwise_l1": LibraryEntry("l1", True, False, {
        "l2_binary_search": Param("bool", True),
        "init_steps": Param("int", 1000, lo=1),  # salt-and-pepper noise steps
    }),
    "hsj_linf": LibraryEntry("linf", True, False, dict(_HSJ)),
    "hsj_l2": LibraryEntry("l2", True, False, dict(_HSJ)),
    "fmn_linf": LibraryEntry("linf", False, False, dict(_FMN)),
    "fmn_l2": LibraryEntry("l2", False, False, dict(_FMN)),
    "fmn_l1": LibraryEntry("l1", False, False, dict(_FMN)),
}


@dataclass(frozen=True)
class FoolboxSpec(LibrarySpec):
    """A validated foolbox attack spec."""

    type: ClassVar[str] = "foolbox"
    TABLE: ClassVar[dict[str, LibraryEntry]] = FOOLBOX_ATTACKS
    PACKAGE: ClassVar[str] = "foolbox"

    def describe(self) -> Description:
        return {**super().describe(), "label": f"foolbox {self.attack}"}

    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        from jobs.attacks.foolbox.attack import FoolboxAttack

        return FoolboxAttack(self, bounds=bounds)
