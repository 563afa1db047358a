"""Plots of the Section 2 theory (``mpo theory``) and the toy panel of ``mpo report``.

matplotlib with the Agg backend; every figure is written as PNG and SVG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.figures import save_figure
from analysis.theory import MpoError, Section2, interpolating_classifier, linear_risk


def _save(fig: Figure, path_without_suffix: str | Path) -> list[Path]:
    paths = save_figure(fig, path_without_suffix, dpi=150, bbox_inches="tight")
    plt.close(fig)  # pyplot keeps every figure it made until closed
    return paths


def family_curve(dist: Section2, n: int = 181) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(theta, R_inf(2 eta), R_1(2)) of the classifiers sign(cos t x0 + sin t sum x_i / sqrt d)."""
    thetas = np.linspace(0.0, math.pi / 2, n)
    r_inf, r_1 = [], []
    for t in thetas:
        clf = interpolating_classifier(dist, float(t))
        r_inf.append(linear_risk(dist, clf, "linf", dist.eps_linf))
        r_1.append(linear_risk(dist, clf, "l1", dist.eps_l1))
    return thetas, np.array(r_inf), np.array(r_1)


#: where a point's label may go (offset points), tried in turn until it overlaps no other text
_OFFSETS = [(7, 5), (7, -13), (-7, 5), (-7, -13), (7, 17), (-7, 17), (7, -25), (-7, -25),
            (7, 29), (-7, 29), (7, -37), (-7, -37), (7, 41), (-7, 41)]


def annotate_apart(ax: Axes, point: tuple[float, float], text: str, *, fontsize: int = 8,
                   avoid: Sequence[tuple[float, float]] = ()) -> None:
    """Label ``point`` where the label overlaps none of the axes' texts so far and none of the
    markers at ``avoid`` (data coordinates): the first free place of ``_OFFSETS`` (left of the
    point for negative x offsets); the first place if none is free."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    taken = [t.get_window_extent(renderer) for t in ax.texts]
    if ax.get_legend() is not None:
        taken.append(ax.get_legend().get_window_extent(renderer))
    frame = ax.get_window_extent(renderer)
    others = [a for a in avoid if a != point]
    for px, py in ax.transData.transform(others) if others else ():
        taken.append(Bbox([[px - 9, py - 9], [px + 9, py + 9]]))
    for dx, dy in _OFFSETS:
        ann = ax.annotate(text, point, textcoords="offset points", xytext=(dx, dy),
                          fontsize=fontsize, ha="left" if dx >= 0 else "right")
        box = ann.get_window_extent(renderer)
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        if inside and not any(box.overlaps(b) for b in taken):
            return
        ann.remove()
    ax.annotate(text, point, textcoords="offset points", xytext=_OFFSETS[0], fontsize=fontsize)


def _risk_plane(ax: Axes, dist: Section2, avoid: Sequence[tuple[float, float]] = (),
                legend: bool = False) -> None:
    """The (R_1, R_inf) plane: the classifier family, the constant classifier, and Theorem 1's
    bound; its labels kept off the markers at ``avoid``."""
    _, r_inf, r_1 = family_curve(dist)
    grid = np.linspace(0, 1, 2)
    ax.fill_between(grid, 0, 1 - grid, color="0.9", label="R_avg < 1/2 (impossible, Thm 1)")
    ax.plot(grid, 1 - grid, "k--", lw=1, label="R_avg = 1/2")
    ax.plot(r_1, r_inf, "-", color="C0", lw=2, label="sign(x0) -> sign(sum x_i)")
    ax.plot([r_1[0]], [r_inf[0]], "o", color="C0")
    ax.plot([r_1[-1]], [r_inf[-1]], "s", color="C0")
    ax.plot([0.5], [0.5], "D", color="0.4")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    if legend:
        ax.legend(fontsize=7, loc="upper right")
    marks = [(float(r_1[0]), float(r_inf[0])), (float(r_1[-1]), float(r_inf[-1])), (0.5, 0.5)]
    for text, point in zip(("sign(x0)", "sign(sum x_i)", "constant"), marks, strict=True):
        annotate_apart(ax, point, text, avoid=[*marks, *avoid])
    ax.set_xlabel(f"R_adv, l_1 (eps = {dist.eps_l1:g})")
    ax.set_ylabel(f"R_adv, l_inf (eps = 2 eta = {dist.eps_linf:.3g})")


def _theorem1_panel(ax: Axes, dist: Section2, theorem1: Mapping[str, Any]) -> None:
    """Risks of the interpolating classifiers against their angle theta."""
    rows = [r for r in theorem1["rows"] if r["theta_deg"] is not None]
    th = [r["theta_deg"] for r in rows]
    for key, label in (
        ("nat", "natural"),
        ("linf", "l_inf"),
        ("l1", "l_1"),
        ("union", "union (max)"),
        ("avg", "average"),
    ):
        ax.plot(th, [r[key] for r in rows], label=label, lw=2.5 if key == "avg" else 1.3)
    ax.axhline(0.5, color="k", ls="--", lw=1, label="Thm 1 bound on R_avg")
    ax.set_xlabel("theta (deg): 0 = sign(x0), 90 = sign(sum x_i)")
    ax.set_ylabel("risk")
    ax.set_title(f"Theorem 1 (d={dist.d}, alpha={dist.alpha:g}, p0={dist.p0:g})")
    ax.legend(fontsize=8)


def _theorem2_panel(ax: Axes, t2: Sequence[Mapping[str, Any]]) -> None:
    """The best linear classifier's R_avg against N, with its two risks."""
    ns = [r["n_positions"] for r in t2]
    ax.errorbar(
        ns,
        [r["avg"] for r in t2],
        yerr=[2 * r["avg_stderr"] for r in t2],
        marker="o",
        label="best linear R_avg(l_inf, RT)",
    )
    ax.plot(ns, [r["linf"] for r in t2], ":", marker=".", label="its l_inf risk")
    ax.plot(ns, [r["rt"] for r in t2], ":", marker=".", label="its RT risk")
    ax.axhline(0.5, color="k", ls="--", lw=1, label="1/2")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (positions RT can move x0 to)")
    ax.set_ylabel("risk")
    ax.set_title("Theorem 2: R_avg >= 1/2 - O(1/sqrt N)  (x0 ~ N(y, alpha^-2))")
    ax.legend(fontsize=8)


def _theorem4_panel(ax: Axes, t4: Mapping[str, Any]) -> None:
    """The affine risk at each beta beside the union and the affine adversary's risk."""
    ax.plot(
        t4["betas"], [e["risk"] for e in t4["per_beta"]], marker="o", label="affine at fixed beta"
    )
    ax.axhline(t4["union"]["risk"], color="C3", ls="--", label=f"union = {t4['union']['risk']:.3f}")
    ax.axhline(
        t4["affine"]["risk"],
        color="C2",
        ls=":",
        label=f"affine (worst beta per input) = {t4['affine']['risk']:.3f}",
    )
    ax.set_xlabel("beta (share of the RT range; 1 - beta of the l_inf radius)")
    ax.set_ylabel("risk")
    ax.set_title(
        f"Theorem 4: affine l_inf+RT > union (N={t4['n_positions']}, theta={t4['theta_deg']:.0f}deg)"
    )
    ax.legend(fontsize=8)


def theory_figure(report: Mapping[str, Any], path_without_suffix: str | Path) -> list[Path]:
    """Four panels from ``theory_report``: Theorem 1 (risks against theta, and the risk plane),
    Theorem 2 (best linear R_avg against N) and Theorem 4 (affine risk against beta)."""
    p = report["params"]
    dist = Section2(p["d"], p["alpha"], p["p0"], p["x0"])
    fig, axes = plt.subplots(2, 2, figsize=(11, 9.5))
    _theorem1_panel(axes[0, 0], dist, report["theorem1"])
    _risk_plane(axes[0, 1], dist)
    axes[0, 1].set_title("Theorem 1: no classifier below the line")
    axes[0, 1].legend(fontsize=7, loc="upper right")
    _theorem2_panel(axes[1, 0], report["theorem2"])
    _theorem4_panel(axes[1, 1], report["theorem4"])
    fig.tight_layout()
    return _save(fig, path_without_suffix)


def toy_panel(
    params: Mapping[str, Any] | None,
    models: Sequence[Mapping[str, Any]],
    path_without_suffix: str | Path,
) -> list[Path]:
    """Trained toy models on the theory's axes: the (R_1, R_inf) plane with the linear family, the
    constant classifier and Theorem 1's bound R_avg >= 1/2. Writes PNG and SVG; returns their paths.

    ``params``: the toy dataset's parameters (``ToyParams`` fields). ``models``: dicts with
    ``label``, ``risk_linf``, ``risk_l1`` (adversarial risks at eps 2 eta and 2, in [0, 1]) and
    optionally ``risk_union``.
    """
    dist = Section2.from_params(params)
    for m in models:
        for key in ("label", "risk_linf", "risk_l1"):
            if key not in m:
                raise MpoError(
                    f"model {m.get('label', '?')!r}: missing '{key}' (need label, risk_linf, risk_l1)"
                )
        for key in ("risk_linf", "risk_l1", "risk_union"):
            v = m.get(key)
            if v is not None and not (0.0 <= float(v) <= 1.0):
                raise MpoError(f"model {m['label']!r}: {key} = {v}: must be a risk in [0, 1]")
    fig, ax = plt.subplots(figsize=(6.2, 6))
    points = [(float(m["risk_l1"]), float(m["risk_linf"])) for m in models]
    _risk_plane(ax, dist, avoid=points, legend=True)
    for i, (x, y) in enumerate(points):
        ax.plot([x], [y], "*", ms=13, color=f"C{(i + 1) % 10}", mec="k", mew=0.5)
    for m, point in zip(models, points, strict=True):
        text = m["label"]
        if m.get("risk_union") is not None:  # the tables' measure: accuracy, in percent
            text += f" (union acc. {100 * (1 - float(m['risk_union'])):.1f}%)"
        annotate_apart(ax, point, text, avoid=points)
    bound = "" if dist.x0 == "sign" else " (bound proven for sign x0)"
    ax.set_title(
        f"toy: trained models vs theory (d={dist.d}, alpha={dist.alpha:g}, p0={dist.p0:g}){bound}",
        fontsize=9,
    )
    return _save(fig, path_without_suffix)
