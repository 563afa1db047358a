"""The train cost column: each model's training passes over the group's single-attack models'.

A model's own cost is its forward plus backward passes over all its training (passes per
example, attacks included, times the examples: ``jobs.train_cost.training_cost``), divided by the
mean of the group's single-attack models trained from scratch (strategy ``single``, no
``init``). Beside it, for a model with ancestors (fine-tuned, or a soup), the passes of its whole
lineage (itself and each ancestor once, ``jobs.finetune``) on the same scale. Runs whose cost
records do not count the examples keep the passes per example, and no lineage.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from analysis.model_info import ModelInfo

#: ``TrainCosts.unit``: passes over all training examples, or per training example
TOTAL, PER_EXAMPLE = "total", "per example"


@dataclass(frozen=True)
class TrainCosts:
    """Each model's training cost over the reference (by model id; None where unknown)."""

    own: dict[str, float | None]
    with_ancestors: dict[str, float | None]
    unit: str = TOTAL
    #: why there are none although the run recorded costs
    note: str | None = None


def train_costs(models: list[ModelInfo]) -> TrainCosts:
    """Each model's own training passes, and with its ancestors', over the mean of the
    single-attack models trained from scratch (see the module's docstring).

    Passes in all (per example times the examples) when every recorded cost says how many
    examples it counts; otherwise passes per example, as older runs recorded, and no lineage."""
    ids = [m.model_id for m in models]
    recorded = [m for m in models if m.train_passes is not None]
    unit = TOTAL if all(m.train_passes_total is not None for m in recorded) else PER_EXAMPLE
    none = TrainCosts(own=dict.fromkeys(ids), with_ancestors=dict.fromkeys(ids), unit=unit)
    if not recorded:
        return none

    def measure(m: ModelInfo) -> float | None:
        return m.train_passes_total if unit == TOTAL else m.train_passes

    singles = [m for m in recorded if m.strategy == "single"]
    reference = [measure(m) for m in singles if m.from_scratch]
    if not singles:
        return replace(none, note="no single-attack model has a recorded training cost")
    if not reference or not float(np.mean(reference)) > 0:
        return replace(none, note="no single-attack model trained from scratch has a recorded "
                                  "training cost")
    mean = float(np.mean(reference))
    own = {m.model_id: None if measure(m) is None else measure(m) / mean for m in models}
    ancestors = {m.model_id: None if unit != TOTAL or m.passes_with_ancestors is None
                 else m.passes_with_ancestors / mean for m in models}
    return TrainCosts(own=own, with_ancestors=ancestors, unit=unit)
