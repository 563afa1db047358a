"""What the report knows of one model: ``ModelInfo`` (from its rows, the manifest and its trial
folder), with what its records say of it: its training config record, what it is a soup of,
whether it was trained from scratch, and its training cost (its own passes, and with its
ancestors' when a lineage is recorded: ``jobs.finetune``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from analysis.soups import SoupRecord
from jobs.run_folder import FAILED_STATES


@dataclass
class ModelInfo:
    """What is known about one trained model (from rows, manifest and trial folder)."""

    model_id: str
    label: str
    dataset: str = ""
    strategy: str = ""
    train_families: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    seed: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    state: str | None = None
    wall_seconds: float | None = None
    has_results: bool = False
    #: the training cost record (``jobs.train_cost.training_cost``), when the run recorded it
    train_cost: dict[str, Any] | None = None

    @property
    def failed(self) -> bool:
        return self.state is not None and self.state.lower() in FAILED_STATES

    @property
    def train_passes(self) -> float | None:
        """Forward plus backward passes per training example, or None when not recorded."""
        cost = self.train_cost or {}
        passes = [cost.get(k) for k in ("fwd_per_example", "bwd_per_example")]
        if not all(isinstance(p, (int, float)) and math.isfinite(p) for p in passes):
            return None
        return float(sum(passes))

    @property
    def record(self) -> dict[str, Any]:
        """The model's training config record: the results metadata nests it under ``config``
        (beside the model id, label and cost); the manifest and config.json hold it as is."""
        inner = self.config.get("config")
        return inner if isinstance(inner, dict) else self.config

    @property
    def soup(self) -> SoupRecord | None:
        """What the model is a soup of (None: not a soup)."""
        return SoupRecord.parse(self.record.get("soup"))

    @property
    def from_scratch(self) -> bool:
        """Trained from random weights: no ``init``, not a soup, no ancestor in its cost."""
        lineage = (self.train_cost or {}).get("lineage")
        ancestors = isinstance(lineage, dict) and any(k != self.model_id for k in lineage)
        return not (self.record.get("init") or self.soup or ancestors)

    @property
    def train_passes_total(self) -> float | None:
        """Forward plus backward passes over all of its own training (passes per example times
        the examples), or None when the record lacks either; 0 for a soup."""
        per = self.train_passes
        examples = (self.train_cost or {}).get("examples")
        if per is None or not isinstance(examples, (int, float)) or not math.isfinite(examples):
            return None
        return per * float(examples)

    @property
    def passes_with_ancestors(self) -> float | None:
        """Its own passes plus every ancestor's (each once: the models it was fine-tuned from
        or, for a soup, its ingredients and theirs); None without a recorded lineage."""
        cost = self.train_cost or {}
        total = cost.get("with_ancestors")
        passes = total.get("passes") if isinstance(total, dict) else None
        if not isinstance(cost.get("lineage"), dict) or not isinstance(passes, (int, float)):
            return None
        return float(passes) if math.isfinite(passes) else None
