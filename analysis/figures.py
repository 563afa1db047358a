"""The report's plots (matplotlib, Agg): Figure 1 (an Adv_max model's accuracy as the budget
grows) and each group's robustness curves (every model's accuracy against the radius)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.curves import RADIUS, GroupCurves
from analysis.metrics import SweepCurves
from jobs.io import atomic_write

#: One colour per family, shared by the curve and its single-perturbation reference line.
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
#: The label every curve of a suite with fewer attacks below the full budget carries.
REDUCED = "reduced protocol"
FORMATS = ("png", "svg")
_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}


def _family_label(family: str, eps: float, reduced: bool = False) -> str:
    label = family if eps is None or math.isnan(eps) else f"{family} (ε={eps:.3g})"
    return f"{label}, {REDUCED}" if reduced else label


def plot_sweep(curves: SweepCurves, path_without_suffix: str | Path) -> list[Path]:
    """Plot ``curves`` and write PNG and SVG next to ``path_without_suffix``.

    Solid lines: accuracy against each family at a fraction of its full budget (shaded: Wilson
    95% interval); dotted black: the union at that fraction; dashed horizontal lines: each
    single-perturbation model's accuracy against its own family at the full budget.
    """
    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = {fam: COLORS[i % len(COLORS)] for i, fam in enumerate(curves.family)}
    for fam, points in curves.family.items():
        if not points:
            continue
        xs = [t for t, _ in points]
        ax.plot(xs, [e.percent for _, e in points], "-o", color=colors[fam], markersize=3,
                label=_family_label(fam, curves.epsilon.get(fam, math.nan), curves.reduced))
        ax.fill_between(xs, [100 * e.low for _, e in points], [100 * e.high for _, e in points],
                        color=colors[fam], alpha=0.15, linewidth=0)
    if curves.union:
        ax.plot([t for t, _ in curves.union], [e.percent for _, e in curves.union], ":o",
                color="black", markersize=3,
                label=f"union, {REDUCED}" if curves.reduced else "union")
    for label, fam, est in curves.references:
        ax.axhline(est.percent, linestyle="--", linewidth=1, color=colors.get(fam, "gray"),
                   label=f"{label} vs {fam} (full budget)")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 100.0)
    ax.set_xlabel("fraction of the full budget")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{curves.group}: {curves.display}" + (f" ({REDUCED})" if curves.reduced else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path_without_suffix)


def plot_curves(group: GroupCurves, path_without_suffix: str | Path) -> list[Path]:
    """One panel per family (accuracy against the radius; against the fraction of the budget
    for families without one) and one for the union (against the fraction of the budget), one
    line per model with its Wilson 95% band; a dotted line marks the full budget."""
    n = len(group.columns)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.4 * cols + 1.6, 3.0 * rows), dpi=100)
    FigureCanvasAgg(fig)
    cmap = matplotlib.colormaps["tab10" if len(group.models) <= 10 else "tab20"]
    for i, column in enumerate(group.columns):
        ax = fig.add_subplot(rows, cols, i + 1)
        full = None
        for j, model in enumerate(group.models):
            curve = model.curves[column]
            xs = [x for x, _ in curve.points]
            color = cmap(j % cmap.N)
            ax.plot(xs, [e.percent for _, e in curve.points], "-o", color=color, markersize=2.5,
                    linewidth=1.2, label=model.display if i == 0 else None)
            ax.fill_between(xs, [100 * e.low for _, e in curve.points],
                            [100 * e.high for _, e in curve.points], color=color, alpha=0.1,
                            linewidth=0)
            full = next((x for x, b in zip(xs, curve.budgets, strict=True) if b == 1.0), full)
        if full is not None:
            ax.axvline(full, linestyle=":", linewidth=0.8, color="gray")
        ax.set_xlabel("radius (ε)" if group.axes[column] == RADIUS
                      else "fraction of the full budget")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0.0, 100.0)
        ax.set_title(column, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{group.group}: robustness curves" + (f" ({REDUCED})" if group.reduced else ""),
                 fontsize=11)
    fig.legend(loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0.0, 0.0, 1.0 - 1.5 / (3.4 * cols + 1.6), 1.0))
    return save_figure(fig, path_without_suffix)


def save_figure(fig: Figure, path_without_suffix: str | Path, **savefig: Any) -> list[Path]:
    """Write ``fig`` as PNG and SVG next to ``path_without_suffix`` (each atomically, without the
    date and software stamps, so an unchanged figure is an unchanged file); returns the paths.
    ``savefig`` goes to ``Figure.savefig`` (dpi, bbox_inches)."""
    base = Path(path_without_suffix)
    out = []
    for fmt in FORMATS:
        out.append(atomic_write(
            base.with_name(f"{base.name}.{fmt}"),
            lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, metadata=_METADATA[fmt], **savefig),
        ))
    return out
