"""Attack library: PGD l_inf / l_2, SLIDE l_1, rotation-translation, affine combinations, MSD,
and foolbox / AutoAttack attacks for evaluation.

    from jobs.attacks import make_attack
    attack = make_attack({"type": "l1", "epsilon": 10.0, "k": 100, "a": 0.5, "perc": 99})
    result = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    result.x_adv, result.success, result.loss, result.pred, result.norm, result.transform

Spec keys are those of the paper's public config files. ``parse_spec`` (the registry,
``jobs.attacks.spec``) turns a spec dict into its spec object, torch-free; each attack type is a
package holding its spec (``spec``) beside its attack (``attack``), which ``spec.build`` loads.
The attack classes are importable from here too, loaded on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs.attacks.balls import LP_FAMILIES
from jobs.attacks.checks import AttackSpecError
from jobs.attacks.spec import SPEC_TYPES, parse_spec
from jobs.attacks.specbase import AttackSpec, Bounds
from jobs.lazy import lazy_exports

_LAZY = {
    "Attack": "jobs.attacks.base", "AttackConstraintError": "jobs.attacks.base",
    "AttackResult": "jobs.attacks.base", "margin_loss": "jobs.attacks.base",
    "linf_l1_gauge": "jobs.attacks.norms", "perturbation_norm": "jobs.attacks.norms",
    "project": "jobs.attacks.projections", "project_l1": "jobs.attacks.projections",
    "project_l2": "jobs.attacks.projections", "project_linf": "jobs.attacks.projections",
    "L1Threat": "jobs.attacks.threats", "L2Threat": "jobs.attacks.threats",
    "LinfThreat": "jobs.attacks.threats", "Threat": "jobs.attacks.threats",
    "PGDAttack": "jobs.attacks.pgd.attack", "pgd": "jobs.attacks.pgd.attack",
    "DEFAULT_EVAL_BATCH": "jobs.attacks.spatial.attack", "RTAttack": "jobs.attacks.spatial.attack",
    "rt_grid": "jobs.attacks.spatial.attack", "rt_transform": "jobs.attacks.spatial.attack",
    "AffineLinfL1": "jobs.attacks.affine.attack", "AffineLinfRT": "jobs.attacks.affine.attack",
}  # fmt: skip
__all__ = ["LP_FAMILIES", "SPEC_TYPES", "AttackSpec", "AttackSpecError", "make_attack",
           "parse_spec", *_LAZY]
__getattr__ = lazy_exports(__name__, _LAZY)


def _check_bounds(bounds: Bounds) -> Bounds:
    if bounds is None:
        return None
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be None or a pair (lo, hi), got {bounds!r}") from None
    if not lo < hi:
        raise ValueError(f"bounds must satisfy lo < hi, got {bounds!r}")
    return (lo, hi)


def make_attack(spec: Mapping[str, Any] | AttackSpec, *, bounds: Bounds = (0.0, 1.0),
                eval_batch: int | None = None, stop_when_fooled: bool = False) -> Any:
    """Build an attack (a ``jobs.attacks.base.Attack``) from a paper-style spec dict or a parsed
    spec; bounds=None for unbounded inputs.

    stop_when_fooled (evaluation): an attack that can (``Attack.can_stop``) takes each input out
    at its first fooling candidate; the same inputs end up fooled, for fewer passes.

    eval_batch: images per forward pass when the attack scores many transforms (rt, affine
    linf+rt); None: the device's size (``jobs.attacks.spatial.attack.DEFAULT_EVAL_BATCH``).
    Raises AttackSpecError (naming the key) for an invalid spec.
    """
    parsed = parse_spec(spec)
    b = _check_bounds(bounds)
    if eval_batch is None:
        from jobs.attacks.spatial.attack import DEFAULT_EVAL_BATCH

        eval_batch = DEFAULT_EVAL_BATCH
    if not isinstance(eval_batch, int) or eval_batch < 1:
        raise ValueError(f"eval_batch must be a positive integer, got {eval_batch!r}")
    attack = parsed.build(bounds=b, eval_batch=eval_batch)
    attack.stop_when_fooled = bool(stop_when_fooled and attack.can_stop)
    return attack
