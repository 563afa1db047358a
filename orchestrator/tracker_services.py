"""The MLflow and Weights & Biases trackers of ``mpo sweep`` (``--mlflow``, ``--wandb``): Ray's
``MLflowLoggerCallback`` and ``WandbLoggerCallback`` (``ray.air.integrations``), told each
model's run name, parameters and metric axes (``orchestrator.trackers``). Imported only when a
sweep asks for one of them: importing mlflow takes seconds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem, _WandbLoggingActor

from orchestrator.tracking import Tracked, model_id, points

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


class MLflowCallback(MLflowLoggerCallback):
    """Ray's MLflow logger, one MLflow run per model: named by its run name, its config as the
    params, the metrics of ``points`` (each at its own axis' step)."""

    def __init__(self, models: dict[str, Tracked], tracking_uri: str, *, experiment_name: str,
                 tags: dict[str, str]) -> None:
        super().__init__(tracking_uri, experiment_name=experiment_name, tags=tags)
        self.models = models

    def log_trial_start(self, trial: Trial) -> None:
        mid = model_id(trial)
        if mid not in self.models or trial in self._trial_runs:
            return  # a restarted trial keeps its run
        tracked = self.models[mid]
        tags = {**self.tags, "mpo.model_id": mid, "trial_name": str(trial)}
        run = self.mlflow_util.start_run(run_name=tracked.name, tags=tags)
        self._trial_runs[trial] = run.info.run_id
        self.mlflow_util.log_params(run_id=run.info.run_id, params_to_log=tracked.params)

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        run_id = self._trial_runs.get(trial)
        if run_id is None:
            return
        for p in points(result):
            self.mlflow_util.log_metrics(run_id=run_id, metrics_to_log=p.metrics, step=p.step)

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        if trial in self._trial_runs:
            super().log_trial_end(trial, failed)


class _AxesLoggingActor(_WandbLoggingActor):
    """Ray's W&B logging actor, which first tells W&B the two axes: ``train/*`` against
    ``train/epoch``, ``eval/*`` against ``eval/shards_done``."""

    _axes_defined = False

    def _handle_result(self, result: dict) -> tuple[dict, dict]:
        if not self._axes_defined:
            self._wandb.define_metric("train/epoch")
            self._wandb.define_metric("train/*", step_metric="train/epoch")
            self._wandb.define_metric("eval/shards_done")
            self._wandb.define_metric("eval/*", step_metric="eval/shards_done")
            self._axes_defined = True
        return super()._handle_result(result)


class WandbCallback(WandbLoggerCallback):
    """Ray's W&B logger, one W&B run per model: named by its run name, grouped by the run
    folder, its config as the W&B config, the metrics of ``points``."""

    _logger_actor_cls = _AxesLoggingActor

    def __init__(self, models: dict[str, Tracked], project: str, *, group: str,
                 directory: Path, tags: list[str]) -> None:
        # the logging actors are Ray workers that may not see this driver's environment
        mode = os.environ.get("WANDB_MODE")
        super().__init__(project=project, group=group, dir=str(directory), tags=tags,
                         **({"mode": mode} if mode else {}))
        self.models = models
        Path(directory).mkdir(parents=True, exist_ok=True)

    def log_trial_start(self, trial: Trial) -> None:
        mid = model_id(trial)
        if mid not in self.models:
            return
        tracked = self.models[mid]
        self._start_logging_actor(
            trial, [*self._exclude_results, *self.excludes], id=trial.trial_id,
            name=tracked.name, resume=False, reinit=True, allow_val_change=True,
            group=self.group, project=self.project, config=dict(tracked.params), **self.kwargs)

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        if trial not in self._trial_logging_actors:
            self.log_trial_start(trial)
        queue = self._trial_queues.get(trial)
        if queue is None:
            return
        for p in points(result):
            # not Queue.put, which waits for the queue's actor (seconds while it starts on a
            # busy node) and so holds up Tune's loop; one caller's calls run in their order
            queue.actor.put.remote((_QueueItem.RESULT, p.metrics), None)

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        if trial in self._trial_queues:
            super().log_trial_end(trial, failed)
