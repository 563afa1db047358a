"""Attack library: PGD l_inf / l_2, SLIDE l_1, rotation-translation, affine combinations.

    from jobs.attacks import make_attack
    attack = make_attack({"type": "l1", "epsilon": 10.0, "k": 100, "a": 0.5, "perc": 99})
    result = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    result.x_adv, result.success, result.loss, result.pred, result.norm, result.transform

Spec keys are those of the paper's public config files (see ``jobs.attacks.spec``); the
library attacks ``{"type": "foolbox" | "autoattack", ...}`` are in ``jobs.attacks.library_spec``.
Each type's spec class (registered in ``jobs.attacks.spec.SPEC_TYPES``) parses, scales and builds
it, and names the ball the evaluation checks its results against.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs.attacks.affine import AffineLinfL1, AffineLinfRT
from jobs.attacks.base import Attack, AttackConstraintError, AttackResult, AttackSpec, margin_loss
from jobs.attacks.checks import AttackSpecError
from jobs.attacks.norms import (
    LP_FAMILIES,
    linf_l1_gauge,
    perturbation_norm,
    project,
    project_l1,
    project_l2,
    project_linf,
)
from jobs.attacks.pgd import PGDAttack, pgd
from jobs.attacks.spatial import DEFAULT_EVAL_BATCH, RTAttack, rt_grid, rt_transform
from jobs.attacks.spec import parse_spec
from jobs.attacks.threats import L1Threat, L2Threat, LinfThreat, Threat

__all__ = [
    "DEFAULT_EVAL_BATCH",
    "LP_FAMILIES",
    "AffineLinfL1",
    "AffineLinfRT",
    "Attack",
    "AttackConstraintError",
    "AttackResult",
    "AttackSpec",
    "AttackSpecError",
    "L1Threat",
    "L2Threat",
    "LinfThreat",
    "PGDAttack",
    "RTAttack",
    "Threat",
    "linf_l1_gauge",
    "make_attack",
    "margin_loss",
    "parse_spec",
    "perturbation_norm",
    "pgd",
    "project",
    "project_l1",
    "project_l2",
    "project_linf",
    "rt_grid",
    "rt_transform",
]


def _check_bounds(bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    if bounds is None:
        return None
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be None or a pair (lo, hi), got {bounds!r}") from None
    if not lo < hi:
        raise ValueError(f"bounds must satisfy lo < hi, got {bounds!r}")
    return (lo, hi)


def make_attack(
    spec: Mapping[str, Any] | AttackSpec, *, bounds: tuple[float, float] | None = (0.0, 1.0),
    eval_batch: int = DEFAULT_EVAL_BATCH,
) -> Attack:
    """Build an attack from a paper-style spec dict (or a parsed spec); bounds=None for unbounded
    inputs.

    eval_batch: images per forward pass when the attack scores many transforms (rt, affine
    linf+rt). Raises AttackSpecError (naming the key) for an invalid spec.
    """
    b = _check_bounds(bounds)
    if not isinstance(eval_batch, int) or eval_batch < 1:
        raise ValueError(f"eval_batch must be a positive integer, got {eval_batch!r}")
    return parse_spec(spec).build(bounds=b, eval_batch=eval_batch)
