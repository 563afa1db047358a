"""Figure-1 style plots: an Adv_max model's accuracy as the budget grows (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.metrics import SweepCurves
from jobs.io import atomic_write

#: One colour per family, shared by the curve and its single-perturbation reference line.
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
FORMATS = ("png", "svg")
_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}


def _family_label(family: str, eps: float) -> str:
    return family if eps is None or math.isnan(eps) else f"{family} (ε={eps:.3g})"


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
                label=_family_label(fam, curves.epsilon.get(fam, math.nan)))
        ax.fill_between(xs, [100 * e.low for _, e in points], [100 * e.high for _, e in points],
                        color=colors[fam], alpha=0.15, linewidth=0)
    if curves.union:
        ax.plot([t for t, _ in curves.union], [e.percent for _, e in curves.union], ":o",
                color="black", markersize=3, label="union")
    for label, fam, est in curves.references:
        ax.axhline(est.percent, linestyle="--", linewidth=1, color=colors.get(fam, "gray"),
                   label=f"{label} vs {fam} (full budget)")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 100.0)
    ax.set_xlabel("fraction of the full budget")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{curves.group}: {curves.display}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
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
