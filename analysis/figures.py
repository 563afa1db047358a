"""The report's plots (matplotlib, Agg): Figure 1 (an Adv_max model's accuracy as the budget
grows), each group's robustness curves (every model's accuracy against the radius) and each soup
family's accuracies along the soups' weights."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.curves import RADIUS, GroupCurves
from analysis.metrics import SweepCurves
from analysis.soup_curves import SoupCurve
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


def _soup_style(column: str, families: tuple[str, ...]) -> tuple[str, str]:
    """(line style, colour) of a soup curve's column: the families as in Figure 1, the union
    dotted black, clean solid grey."""
    if column == "union":
        return ":", "black"
    if column == "clean":
        return "-", "gray"
    return "-", COLORS[families.index(column) % len(COLORS)]


def plot_soup(curve: SoupCurve, path_without_suffix: str | Path) -> list[Path]:
    """Clean accuracy, accuracy against each family and the union along the first ingredient's
    weight (shaded: Wilson 95% interval); open squares: the ingredients alone, the end points; a
    dotted vertical line marks the soup the table shows. With more than two ingredients, points
    at one weight are other mixtures: markers with error bars (set a little apart per column),
    no lines."""
    fig = Figure(figsize=(6.8, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    families = tuple(c for c in curve.columns if c not in ("clean", "union"))
    lines = len(curve.ingredients) == 2
    for i, column in enumerate(curve.columns):
        points = [p for p in curve.points if column in p.accuracy]
        if not points:
            continue
        style, color = _soup_style(column, families)
        # markers of several columns at one x would hide each other: set them a little apart
        dodge = 0.0 if lines else 0.01 * (i - (len(curve.columns) - 1) / 2)
        xs = [p.x + dodge for p in points]
        ys = [p.accuracy[column].percent for p in points]
        lows = [100 * p.accuracy[column].low for p in points]
        highs = [100 * p.accuracy[column].high for p in points]
        if lines:
            ax.plot(xs, ys, style, color=color, linewidth=1.2, label=column)
            ax.fill_between(xs, lows, highs, color=color, alpha=0.12, linewidth=0)
        else:
            ax.errorbar(xs, ys, yerr=[[y - lo for y, lo in zip(ys, lows, strict=True)],
                                      [hi - y for y, hi in zip(ys, highs, strict=True)]],
                        fmt="none", ecolor=color, alpha=0.4, linewidth=0.8)
            ax.plot([], [], "o", color=color, label=column)
        for ingredient, marker, size in ((False, "o", 3.5), (True, "s", 5.0)):
            mine = [(x, y) for p, x, y in zip(points, xs, ys, strict=True)
                    if p.ingredient == ingredient]
            ax.plot([x for x, _ in mine], [y for _, y in mine], marker, color=color,
                    markersize=size, markerfacecolor="white" if ingredient else color)
    ax.plot([], [], "s", color="gray", markerfacecolor="white", label="ingredient alone")
    best = next((p for p in curve.points if p.model_id == curve.best), None)
    if best is not None:
        ax.axvline(best.x, linestyle=":", linewidth=0.8, color="gray", label="soup in the table")
    for p in curve.points:  # name the ends (with more ingredients, only the first's is one x)
        if p.ingredient and (p.x == 1.0 or lines):
            ax.annotate(p.label, (p.x, 105.0), xytext=(3 if p.x == 0.0 else -3, -9),
                        textcoords="offset points", ha="left" if p.x == 0.0 else "right",
                        fontsize=7, color="dimgray")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(0.0, 105.0)
    ax.set_xlabel(f"weight of {curve.labels[0]}" + ("" if lines else " (points ordered by it)"))
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{curve.group}: soup {curve.family} of {', '.join(curve.labels)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
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
