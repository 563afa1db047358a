"""Every number ``mpo theory`` shows, as one JSON-ready dict: Theorem 1, Claim 3, Theorem 2,
Theorem 4, and a Monte-Carlo check of the closed forms."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from analysis.theory import (
    Section2,
    claim3_gap,
    constant_classifier,
    interpolating_classifier,
    theorem1_row,
    theorem1_sweep,
)
from analysis.theory_mc import feature_shift, linear_optimal, mc_risks, x0_shift
from analysis.theory_rt import check_positions, theorem2_table, theorem4_best_union


def default_positions(n_positions: int) -> list[int]:
    """Theorem 2's sweep: powers of two below ``n_positions``, then ``n_positions`` itself."""
    out = [2**k for k in range(1, 16) if 2**k < n_positions]
    return [*out, n_positions]


def theory_report(
    dist: Section2, *, n_positions: int = 16, n_angles: int = 91, n: int = 40_000, seed: int = 0
) -> dict[str, Any]:
    """Every number ``mpo theory`` shows: Theorem 1 sweep, Claim 3, Theorem 2, Theorem 4, and a
    Monte-Carlo check of the closed forms for sign(x0) and sign(sum x_i), with each classifier's
    optimal perturbations (must agree) and with the proofs' classifier-free perturbations (a lower
    bound for any classifier)."""
    npos = check_positions(dist, n_positions)
    sweep = theorem1_sweep(dist, n_angles=n_angles)
    ends = [
        constant_classifier(dist),
        interpolating_classifier(dist, 0.0),
        interpolating_classifier(dist, math.pi / 2),
    ]
    mc_check = []
    proof = {"linf": feature_shift(dist.eps_linf), "l1": x0_shift(dist.eps_l1)}
    for clf in ends[1:]:
        optimal = {
            "linf": linear_optimal(clf, "linf", dist.eps_linf),
            "l1": linear_optimal(clf, "l1", dist.eps_l1),
        }
        mc_opt = mc_risks(clf, dist, optimal, n=n, seed=seed)
        mc_proof = mc_risks(clf, dist, proof, n=n, seed=seed)
        row = theorem1_row(dist, clf)
        for k in ("nat", "linf", "l1", "avg"):
            mc_check.append(
                {
                    "classifier": clf.name,
                    "risk": k,
                    "exact": row[k],
                    "mc_optimal": mc_opt[k].risk,
                    "mc_optimal_stderr": mc_opt[k].stderr,
                    "mc_proof": mc_proof[k].risk,
                    "mc_proof_stderr": mc_proof[k].stderr,
                }
            )
    avgs = [r["avg"] for r in sweep]
    return {
        "params": {
            **dist.to_dict(),
            "eps_linf": dist.eps_linf,
            "eps_l1": dist.eps_l1,
            "eps_l2": 2.0,
            "n_positions": npos,
        },
        "theorem1": {
            "rows": sweep,
            "min_avg": min(avgs),
            "min_avg_classifier": sweep[int(np.argmin(avgs))]["classifier"],
            "holds": dist.x0 != "sign" or min(avgs) >= 0.5 - 1e-12,
        },
        "claim3": claim3_gap(
            dist, [interpolating_classifier(dist, float(t)) for t in np.linspace(0, math.pi / 2, 7)]
        ),
        "theorem2": theorem2_table(dist, default_positions(npos), n=n, seed=seed),
        "theorem4": theorem4_best_union(dist, npos, n=2 * n, seed=seed),
        "mc_check": mc_check,
    }
