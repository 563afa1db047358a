"""How results files written before mpo recorded each attack's description are described.

Since then, every suite attack in a results file's metadata (``mpo.suite``) carries
``describe``: the spec's own statement of what it is (``jobs.attacks.specbase.Description``),
which the analysis reads as it is, so a new attack type needs no change here. Files written
earlier (results schema 2 before descriptions) hold only the spec; this module describes those
specs the way mpo described them then. It is frozen: it knows the attack types that existed when
descriptions were added, and nothing new is ever added to it.
"""

from __future__ import annotations

import math
from typing import Any

#: The type column's name for each spec type of jobs.attacks (others are shown as written).
SPEC_TYPES = {"linf": "PGD", "l2": "PGD", "l1": "SLIDE"}
#: Specs made of parts, and how their parts' radii combine: an affine attack composes its two
#: perturbations, MSD searches the union of its balls.
COMPOSITE = {"affine": " + ", "msd": " ∪ "}
#: The components of AutoAttack's standard ensemble, in the order it runs them.
AUTOATTACK_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")


def _num(x: float) -> str:
    return f"{x:.4g}"


def spec_type(spec: dict[str, object]) -> str:
    """What kind of attack a spec runs: PGD, SLIDE, RT grid, AutoAttack apgd-ce, foolbox ..."""
    typ = str(spec.get("type", ""))
    if typ == "rt":
        return "RT grid" if _int(spec.get("random_tries"), -1) < 0 else "RT random"
    if typ == "autoattack":
        if spec.get("version") == "standard":
            return "AutoAttack standard (apgd-ce, apgd-t, fab-t, square)"
        return f"AutoAttack {spec.get('attack', '')}".strip()
    if typ == "foolbox":
        return f"foolbox {spec.get('attack', '')}".strip()
    if typ == "affine":
        return "affine (" + " + ".join(spec_type(s) for s in _parts(spec)) + ")"
    if typ == "msd":
        return "MSD (" + ", ".join(str(p.get("type", "")) for p in _parts(spec)) + ")"
    return SPEC_TYPES.get(typ, typ)


def _int(value: object, default: int) -> int:
    return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else default


def _parts(spec: dict[str, object]) -> list[dict[str, object]]:
    parts = spec.get("attacks")
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def spec_radius(spec: dict[str, object], epsilon: float) -> str:
    """The attack's radius: epsilon for l_p attacks, the RT limits, an affine attack's parts."""
    if spec.get("type") == "rt":
        limits = spec.get("spatial_limits")
        if isinstance(limits, list) and len(limits) == 3:
            return f"±{_num(limits[0])} px, ±{_num(limits[1])} px, ±{_num(limits[2])}°"
    if spec.get("type") in COMPOSITE:
        parts = [f"{p.get('type', '')} {spec_radius(p, math.nan)}" for p in _parts(spec)]
        return COMPOSITE[str(spec["type"])].join(parts) or "—"
    eps = spec.get("epsilon", epsilon)
    return _num(float(eps)) if isinstance(eps, (int, float)) and math.isfinite(eps) else "—"


def spec_effort(spec: dict[str, object]) -> str:
    """Steps, iterations or queries per input (per restart), as the spec states them."""
    if spec.get("type") == "rt":
        grid = spec.get("grid_granularity")
        tries = _int(spec.get("random_tries"), -1)
        if tries >= 0:
            return f"{tries} random transforms"
        if isinstance(grid, list):
            return f"{math.prod(int(g) for g in grid)} transforms"
    if spec.get("type") == "affine":
        return " + ".join(spec_effort(p) for p in _parts(spec))
    out = []
    for key, unit in (("k", "steps"), ("steps", "steps"), ("n_iter", "iterations"),
                      ("n_queries", "queries")):
        if isinstance(spec.get(key), int):
            out.append(f"{spec[key]} {unit}")
    if isinstance(spec.get("binary_search_steps"), int) and out:
        out[0] = f"{spec['binary_search_steps']} × {out[0]}"
    if isinstance(spec.get("n_target_classes"), int):
        out.append(f"{spec['n_target_classes']} target classes")
    if isinstance(spec.get("init_steps"), int):
        out.append(f"{spec['init_steps']} start steps")
    if spec.get("type") == "autoattack" and spec.get("version") == "standard" and not out:
        out.append("AutoAttack's standard budgets")
    return ", ".join(out) or "—"


def spec_restarts(spec: dict[str, object]) -> str:
    for key in ("reps", "n_restarts"):
        if isinstance(spec.get(key), int):
            return str(spec[key])
    return "1"


def legacy_description(spec: dict[str, Any], epsilon: float) -> dict[str, Any]:
    """A ``describe`` record for a spec from a file that has none."""
    out: dict[str, Any] = {"label": spec_type(spec), "radius": spec_radius(spec, epsilon),
                           "effort": spec_effort(spec), "restarts": spec_restarts(spec)}
    if spec.get("type") == "autoattack" and spec.get("version") == "standard":
        out["kind"], out["components"] = "ensemble", list(AUTOATTACK_STANDARD)
    return out
