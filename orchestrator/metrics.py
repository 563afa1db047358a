"""mpo's own metrics, exported through Ray's metrics API (``ray.util.metrics``).

Every Ray node runs a metrics agent that serves the metrics of the processes on it in
Prometheus's text format (on ``ray start --metrics-export-port``; Ray lists the agents in
``<temp dir>/session_latest/metrics/prometheus/`` for Prometheus's file service discovery).
A trial and its evaluation tasks record into it through a ``TrialMeter``; Ray prefixes every
name with ``ray_`` and a counter's with ``_total`` as well (``exported_name``). Each series is
tagged with the sweep (the run folder's name), the model's label and its id, plus the attack
(evaluation) or the group (union accuracy); Ray adds its own (``SessionName``, ``NodeAddress``,
``WorkerId``, ...).

Gauges are last values: Ray exports a process's gauges while the process lives and drops them
about two export intervals after it is gone (``metrics_report_interval_ms``, 10 s by default),
so a finished trial's gauges end with it; Prometheus keeps their history. Counters add up over a
worker's life (``rate()`` of them is the throughput). The shipped Grafana dashboard
(``orchestrator/monitoring/grafana-mpo.json``) plots them.

Recording a metric never touches the run folder's files except for the union accuracy so far,
which reads the results files of the shards done (at most every ``UNION_EVERY_S`` seconds).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: the tags of every mpo series
BASE_TAGS = ("sweep", "model", "model_id")

#: the union accuracy so far is recomputed at most this often (it reads the results files)
UNION_EVERY_S = 5.0

#: shard durations' histogram buckets (seconds): a toy shard takes about a second, a strong
#: attack on a large shard an hour
SHARD_SECONDS_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)


@dataclass(frozen=True)
class MetricDef:
    """One metric: its kind (gauge, counter, histogram), meaning and tags."""

    name: str
    kind: str
    description: str
    tags: tuple[str, ...] = BASE_TAGS


METRICS: dict[str, MetricDef] = {m.name: m for m in (
    MetricDef("mpo_epochs_done", "gauge", "Training epochs finished (the last epoch's number)."),
    MetricDef("mpo_epochs_total", "gauge", "Training epochs the model's config asks for."),
    MetricDef("mpo_train_examples_per_second", "gauge",
              "Training examples per second over the last epoch (its steps only)."),
    MetricDef("mpo_train_examples", "counter", "Training examples seen (clean inputs)."),
    MetricDef("mpo_shards_done", "gauge", "Evaluation shards of the model finished."),
    MetricDef("mpo_shards_pending", "gauge",
              "Evaluation shards of the model launched and not finished (queued or running)."),
    MetricDef("mpo_shards_failed", "gauge", "Evaluation shards that failed after all retries."),
    MetricDef("mpo_attack_examples_per_second", "gauge",
              "Test inputs per second of the last shard of this attack (wall time of the "
              "shard, model loading included).", (*BASE_TAGS, "attack")),
    MetricDef("mpo_attack_examples", "counter", "Test inputs evaluated by this attack.",
              (*BASE_TAGS, "attack")),
    MetricDef("mpo_shard_seconds", "histogram", "Wall time of one evaluation shard.",
              (*BASE_TAGS, "attack")),
    MetricDef("mpo_union_accuracy", "gauge",
              "Union (all-families) robust accuracy of the group so far: over the test inputs "
              "that every attack of the model has evaluated.", (*BASE_TAGS, "group")),
    MetricDef("mpo_union_inputs", "gauge",
              "Test inputs the union accuracy so far counts.", (*BASE_TAGS, "group")),
)}

#: the metric objects of this process, made on first use (one per name per process)
_MADE: dict[str, Any] = {}


def exported_name(name: str) -> str:
    """The name Prometheus sees: ``ray_`` + name, a counter's + ``_total`` (a histogram's
    series are this + ``_bucket``, ``_sum``, ``_count``)."""
    return f"ray_{name}_total" if METRICS[name].kind == "counter" else f"ray_{name}"


def _metric(name: str) -> Any:
    made = _MADE.get(name)
    if made is None:
        from ray.util import metrics

        d = METRICS[name]
        if d.kind == "histogram":
            made = metrics.Histogram(name, d.description, boundaries=list(SHARD_SECONDS_BUCKETS),
                                     tag_keys=d.tags)
        else:
            cls = metrics.Gauge if d.kind == "gauge" else metrics.Counter
            made = cls(name, d.description, tag_keys=d.tags)
        _MADE[name] = made
    return made


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@dataclass
class TrialMeter:
    """What one trial (one model) records, in the trial and in its evaluation tasks (it is
    sent to them with the task's arguments: plain fields only)."""

    sweep: str
    model: str
    model_id: str
    groups: dict[str, Any] = field(default_factory=dict)  # {group: {"families": [...], ...}}
    _union_at: float = field(default=0.0, repr=False)

    def tags(self, **extra: str) -> dict[str, str]:
        return {"sweep": self.sweep, "model": self.model, "model_id": self.model_id, **extra}

    def epoch(self, metrics: dict[str, Any], total_epochs: int) -> None:
        """After a training epoch: ``metrics`` is the epoch's record (``jobs.training``)."""
        tags = self.tags()
        _metric("mpo_epochs_done").set(float(metrics["epoch"]), tags=tags)
        _metric("mpo_epochs_total").set(float(total_epochs), tags=tags)
        if _finite(metrics.get("examples_per_s")):
            _metric("mpo_train_examples_per_second").set(float(metrics["examples_per_s"]),
                                                         tags=tags)
        if _finite(metrics.get("examples")) and metrics["examples"] > 0:
            _metric("mpo_train_examples").inc(float(metrics["examples"]), tags=tags)

    def shard_done(self, attack: str, inputs: int, seconds: float, computed: bool) -> None:
        """In the evaluation task, after a shard of ``inputs`` test inputs; a shard found
        already written (``computed`` False) counts no inputs and no time."""
        if not computed or inputs <= 0:
            return
        tags = self.tags(attack=attack)
        _metric("mpo_attack_examples").inc(float(inputs), tags=tags)
        _metric("mpo_shard_seconds").observe(float(seconds), tags=tags)
        if seconds > 0:
            _metric("mpo_attack_examples_per_second").set(inputs / seconds, tags=tags)

    def shards(self, paths: Sequence[str], *, failed: int, pending: int,
               final: bool = False) -> None:
        """In the trial, whenever shards finish: the counts, and the union accuracy so far
        (throttled; always when ``final``)."""
        tags = self.tags()
        _metric("mpo_shards_done").set(float(len(paths)), tags=tags)
        _metric("mpo_shards_pending").set(float(pending), tags=tags)
        _metric("mpo_shards_failed").set(float(failed), tags=tags)
        now = time.monotonic()
        if paths and (final or now - self._union_at >= UNION_EVERY_S):
            self._union_at = now
            self.union(paths)

    def union(self, paths: Sequence[str]) -> None:
        """The union accuracy of each group over the inputs every attack evaluated so far; a
        group is left out until every one of its families has results (the union of the
        families seen so far would be too high)."""
        from jobs.results import summarize

        summary = summarize(list(paths), self.groups).get(self.model_id) or {}
        for group, cell in (summary.get("groups") or {}).items():
            wanted = (self.groups.get(group) or {}).get("families") or []
            if set(wanted) - set(cell["families"]) or not _finite(cell["union"]):
                continue
            tags = self.tags(group=group)
            _metric("mpo_union_accuracy").set(float(cell["union"]), tags=tags)
            _metric("mpo_union_inputs").set(float(summary["n"]), tags=tags)
