"""Experiment trackers of ``mpo sweep``: TensorBoard event files always, MLflow and Weights &
Biases when asked (``--mlflow URI``, ``--wandb PROJECT``). Each is a Ray Tune callback on the
driver, so what the trials write on their nodes does not matter.

Every tracker names a model's run ``<label>-<hash>`` (``Adv_max-da748b3a``: the grid's label and
the model id's hash, so that the ``Nat`` of two datasets are two runs), records the model's
config as its parameters (``config.optimizer.lr``, ... and ``grid``, ``model_id``, ``groups``),
and gets the same metrics on two axes:

- ``train/...`` (``loss``, ``clean_acc``, ``adv_acc/<family>``, ``lr``, ``examples_per_s``, the
  cost counters) at step = epoch;
- ``eval/...``: ``eval/shards_done`` and ``eval/shards_failed`` as the evaluation shards finish,
  and once at the end the evaluation summary (``eval/clean``, ``eval/families/<family>``,
  ``eval/attacks/<attack>``, ``eval/groups/<group>/union`` and ``/average``), at step = shards
  done.

TensorBoard: one event folder per model, ``RUN_DIR/tensorboard/<run name>/`` (``tensorboard
--logdir RUN_DIR/tensorboard``), written with tensorboardX (a dependency of ``ray[tune]``); it
replaces Tune's own TBX logger, which named the runs by model id and put epochs and evaluation
reports on one axis. MLflow and W&B go through Ray's ``MLflowLoggerCallback`` and
``WandbLoggerCallback``, told the names, params and axes above
(``orchestrator.tracker_services``, imported only when asked: importing mlflow takes seconds).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.logger import TBXLoggerCallback

from orchestrator.tracking import (
    TENSORBOARD_DIR,
    WANDB_DIR,
    Tracked,
    model_id,
    points,
    tracked_models,
)

if TYPE_CHECKING:
    from ray.tune import Callback
    from ray.tune.experiment import Trial

    from orchestrator.plan import SweepPlan


# ----------------------------------------------------------------------------------------------
# The callbacks


class TensorBoardCallback(TBXLoggerCallback):
    """One event folder per model under ``RUN_DIR/tensorboard``, named by its run name.

    A TBXLoggerCallback, so that Tune does not add its own (which writes into each trial's
    folder, named by model id, with every report on one axis)."""

    def __init__(self, models: dict[str, Tracked], run_dir: Path) -> None:
        super().__init__()
        self.models = models
        self.root = Path(run_dir) / TENSORBOARD_DIR
        self._writers: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment; open writers are this driver's own
        state = self.__dict__.copy()
        state["_writers"], state["_trial_writer"], state["_trial_result"] = {}, {}, {}
        return state

    def _writer(self, trial: Trial) -> Any:
        mid = model_id(trial)
        if mid not in self.models:
            return None
        if mid not in self._writers:
            tracked = self.models[mid]
            writer = self._summary_writer_cls(str(self.root / tracked.name), flush_secs=10)
            table = "\n".join(f"| {k} | {v} |" for k, v in tracked.params.items())
            writer.add_text("config", "| parameter | value |\n|---|---|\n" + table, 0)
            self._writers[mid] = writer
        return self._writers[mid]

    def log_trial_start(self, trial: Trial) -> None:
        self._writer(trial)

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        writer = self._writer(trial)
        if writer is None:
            return
        for p in points(result):
            for tag, value in p.metrics.items():
                writer.add_scalar(tag, value, global_step=p.step)
        writer.flush()

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        writer = self._writers.pop(model_id(trial) or "", None)
        if writer is not None:
            writer.close()

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


# ----------------------------------------------------------------------------------------------
# From the command line


def mlflow_uri_for(uri: str) -> str:
    """A tracking URI as MLflow takes it: a plain folder becomes an absolute ``file://`` URI.
    MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE is set: asking for one by
    name (``--mlflow file:...`` or a folder) sets it for this process."""
    if "://" not in uri and not uri.startswith("file:"):
        uri = Path(uri).expanduser().resolve().as_uri()
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def make_trackers(plan: SweepPlan, run_dir: Path, *, mlflow_uri: str | None = None,
                  wandb_project: str | None = None) -> list[Callback]:
    """The Tune callbacks of a sweep: TensorBoard, and MLflow / W&B when asked."""
    models = tracked_models(plan, run_dir)
    tags = {"mpo.grid": plan.grid.name, "mpo.run_dir": str(run_dir)}
    out: list[Callback] = [TensorBoardCallback(models, run_dir)]
    if mlflow_uri is not None:
        from orchestrator.tracker_services import MLflowCallback

        out.append(MLflowCallback(
            models, mlflow_uri_for(mlflow_uri), tags=tags,
            experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"mpo-{plan.grid.name}"))
    if wandb_project is not None:
        from orchestrator.tracker_services import WandbCallback

        directory = Path(os.environ.get("WANDB_DIR") or Path(run_dir) / WANDB_DIR)
        out.append(WandbCallback(models, wandb_project, group=Path(run_dir).name,
                                 directory=directory, tags=[plan.grid.name]))
    return out
