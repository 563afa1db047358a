"""What every experiment tracker of ``mpo sweep`` records (``orchestrator.trackers``: TensorBoard
and the setup; ``orchestrator.tracker_services``: MLflow and W&B): each model's run name and
parameters, and the metric points of a Tune result on their two axes (``train/...`` by epoch,
``eval/...`` by shards done)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.result import AUTO_RESULT_KEYS

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from orchestrator.plan import SweepPlan

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
#: result keys that are not metrics: Tune's own, and the trainable's phase bookkeeping
NOT_METRICS = {*AUTO_RESULT_KEYS, "done", "trial_id", "experiment_id", "should_checkpoint",
               "phase", "epoch", "epochs", "shards_total", "shards_done", "shards_failed"}

Params = dict[str, str | int | float | bool]


@dataclass(frozen=True)
class Tracked:
    """One model as the trackers see it: its run name and its parameters."""

    name: str
    params: Params


@dataclass(frozen=True)
class Point:
    """Metrics to log at one step of one axis (``train``: epochs; ``eval``: shards done)."""

    axis: str
    step: int
    metrics: dict[str, float]


# ----------------------------------------------------------------------------------------------
# Names, parameters, metrics


def _hash(model_id: str) -> str:
    tail = model_id.rsplit("-", 1)[-1]
    return tail if re.fullmatch(r"[0-9a-f]{8,}", tail) else model_id[:8]


def run_names(labels: dict[str, str]) -> dict[str, str]:
    """{model_id: ``<label>-<hash>``} (a label made safe for a folder name), unique: a clash
    of two hashes falls back to the whole model id."""
    names = {mid: f"{re.sub(r'[^A-Za-z0-9_.+=-]', '_', label)}-{_hash(mid)}"
             for mid, label in labels.items()}
    clashes = {n for n in names.values() if list(names.values()).count(n) > 1}
    return {mid: (f"{n.rsplit('-', 1)[0]}-{mid}" if n in clashes else n)
            for mid, n in names.items()}


def flat_params(prefix: str, obj: object, out: Params | None = None) -> Params:
    """Nested dicts and lists as ``a.b.0.c`` parameters; None as the text ``None``."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        for key, value in obj.items():
            flat_params(f"{prefix}.{key}" if prefix else str(key), value, out)
    elif isinstance(obj, list | tuple) and any(isinstance(v, dict | list) for v in obj):
        for i, value in enumerate(obj):
            flat_params(f"{prefix}.{i}", value, out)
    elif isinstance(obj, list | tuple):
        out[prefix] = json.dumps(list(obj))
    elif isinstance(obj, bool | int | float | str):
        out[prefix] = obj
    else:
        out[prefix] = str(obj)
    return out


def tracked_models(plan: SweepPlan, run_dir: Path) -> dict[str, Tracked]:
    """{model_id: Tracked} for every model of the plan."""
    names = run_names({mid: t.label for mid, t in plan.trials.items()})
    out = {}
    for mid, t in plan.trials.items():
        ev = plan.grid.evaluation[t.dataset]
        params: Params = {"grid": plan.grid.name, "label": t.label, "model_id": mid,
                          "dataset": t.dataset, "strategy": t.strategy,
                          "groups": ",".join(t.groups), "run_dir": str(run_dir),
                          "eval.n_test": ev.n_test, "eval.shard_size": ev.shard_size,
                          "eval.attacks": ",".join(t.attacks)}
        out[mid] = Tracked(names[mid], {**params, **flat_params("config", t.config)})
    return out


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def points(result: dict[str, Any]) -> list[Point]:
    """A trial's Tune result as tracker points: an epoch's training metrics at step = epoch
    (with ``train/epoch``), an evaluation report at step = shards done (with the summary when
    the trial is done)."""
    phase = result.get("phase")
    if phase == "train" and "epoch" in result:
        epoch = int(result["epoch"])
        metrics = {f"train/{'loss' if k == 'train_loss' else k}": float(v)
                   for k, v in result.items() if k not in NOT_METRICS and _number(v)}
        return [Point("train", epoch, {**metrics, "train/epoch": float(epoch)})]
    if phase in ("eval", "done"):
        done = int(result.get("shards_done", 0))
        metrics = {"eval/shards_done": float(done),
                   "eval/shards_failed": float(result.get("shards_failed", 0))}
        if phase == "done":
            metrics.update({k: float(v) for k, v in result.items()
                            if k.startswith("eval/") and _number(v)})
        return [Point("eval", done, metrics)]
    return []


def model_id(trial: Trial) -> str | None:
    """The model id of a trial of the sweep (its Tune config names it)."""
    return trial.config.get("model_id")
