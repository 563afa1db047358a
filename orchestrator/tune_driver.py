"""The Ray side of ``mpo sweep``: connect to a cluster, and run the sweep on Ray Tune.

``connect`` (or ``session``, which also shuts down a cluster it started) joins a Ray cluster or
starts a local one, and describes it (``Cluster``, which
``orchestrator.resources.check_resources`` checks a trial's resources against); ``run_sweep``
runs one Tune trial per model (``orchestrator.trainable.run_trial``) in a run folder that
``orchestrator.runfolder.prepare_run`` wrote, or restores an interrupted run with
``Tuner.restore``. Importing this module imports Ray: only ``mpo sweep`` does, once a sweep runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from orchestrator.grid import SweepPlan
from orchestrator.progress import LiveTable
from orchestrator.resources import Cluster, SweepError, trial_data_dir
from orchestrator.runfolder import RunDir, SweepSettings, record_sweep
from orchestrator.trainable import run_trial

if TYPE_CHECKING:
    from ray.tune.experiment import Trial
    from rich.console import Console


def _init(address: str | None, num_cpus: int | None) -> str | None:
    """``ray.init``: join ``address``, or start a local cluster with the dashboard bound to
    127.0.0.1; returns the dashboard URL, if any."""
    if not address:
        return ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                        log_to_driver=False, logging_level=logging.WARNING).dashboard_url
    try:
        return ray.init(address=address, log_to_driver=False,
                        logging_level=logging.WARNING).dashboard_url
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SweepError(f"cannot connect to the Ray cluster at --address {address}: {err}") from None


def _max_resources() -> dict[str, float] | None:
    """The cluster's largest size from its autoscaler config (None without one)."""
    try:
        from ray._private.state import state

        max_res = state.get_max_resources_from_cluster_config()
    except Exception:  # not every cluster has an autoscaler config; this is only a hint
        return None
    return {k: float(v) for k, v in max_res.items()} if max_res else None


def connect(address: str | None, *, num_cpus: int | None = None) -> Cluster:
    """Join ``address`` (``auto``, ``ray://...``, host:port), reuse a connection this process
    already has (a test session's cluster), or start a local cluster."""
    reuse = ray.is_initialized()
    url = None if reuse else _init(address, num_cpus)
    largest: dict[str, float] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for key in ("CPU", "GPU"):
                largest[key] = max(largest.get(key, 0.0), float(node["Resources"].get(key, 0.0)))
    return Cluster(
        started_here=not reuse and not address,
        address=ray.get_runtime_context().gcs_address,
        dashboard_url=f"http://{url}" if url and not url.startswith("http") else url,
        resources={k: float(v) for k, v in ray.cluster_resources().items()},
        max_resources=_max_resources(),
        largest_node=largest,
    )


@contextlib.contextmanager
def session(address: str | None, *, num_cpus: int | None = None) -> Iterator[Cluster]:
    """``connect``, and shut the local cluster down at the end if this session started it."""
    cluster = connect(address, num_cpus=num_cpus)
    try:
        yield cluster
    finally:
        if cluster.started_here:
            ray.shutdown()


def trial_name(trial: Trial) -> str:
    return str(trial.config["trial"]["model_id"])


def trial_payload(plan: SweepPlan, model_id: str) -> dict[str, Any]:
    """What one trial gets in its Tune config (``orchestrator.trainable.run_trial`` reads it)."""
    t = plan.trials[model_id]
    ev = plan.grid.evaluation[t.dataset]
    return {
        "model_id": model_id,
        "label": t.label,
        "dataset": t.dataset,
        "groups": plan.trial_groups(model_id),
        "config": t.config,
        "attacks": list(t.attacks),
        "n_test": ev.n_test,
        "shard_size": ev.shard_size,
        "suite": plan.suites[t.dataset],
    }


def run_sweep(
    plan: SweepPlan,
    rd: RunDir,
    settings: SweepSettings,
    *,
    resume: bool,
    console: Console,
) -> dict[str, dict[str, Any]]:
    """Run (or resume) the Tune experiment in ``rd/tune``; returns {model_id: trial.json}."""
    # Tune's own console output stays quiet: the live table is the display. The legacy output
    # path honours verbose=0 (the new one still prints a banner); experiment-state snapshot
    # warnings are expected here (a checkpoint per epoch with num_to_keep=1).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    res = settings.resources
    trainable = tune.with_resources(run_trial, tune.PlacementGroupFactory(res.bundles()))
    param_space = {
        "trial": tune.grid_search([trial_payload(plan, mid) for mid in plan.trials]),
        "run_dir": str(rd.path),
        "settings": {"data_dir": trial_data_dir(settings.data_dir),
                     "download": settings.download, "shard_retries": settings.shard_retries,
                     "cpus_per_trial": res.cpus_per_trial,
                     "eval_workers": res.eval_workers, "eval_cpus": res.eval_cpus,
                     "eval_gpus": res.eval_gpus},
        "faults": settings.faults,
    }
    table = LiveTable({mid: t.manifest_entry() for mid, t in plan.trials.items()}, console=console,
                      title=f"mpo sweep {plan.grid.name}: {rd.path}")
    run_config = tune.RunConfig(
        name=rd.tune_dir.name,
        storage_path=str(rd.path),
        verbose=0,
        callbacks=[table],
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )
    if resume and tune.Tuner.can_restore(str(rd.tune_dir)):
        tuner = tune.Tuner.restore(str(rd.tune_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, restart_errored=False)
        # The restored run config carries the old driver's callbacks (unpickled without their
        # console); this driver's live table replaces them.
        tuner._local_tuner.get_run_config().callbacks = [table]
    else:
        if resume and rd.tune_dir.exists():
            # Tune never saved its state (killed within seconds); trials resume from their files.
            shutil.rmtree(rd.tune_dir)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(trial_name_creator=trial_name,
                                        trial_dirname_creator=trial_name, reuse_actors=False),
            run_config=run_config,
        )
    table.start()
    started = time.time()
    try:
        tuner.fit()
    finally:
        table.stop()
    records = {mid: rd.trial_record(mid) for mid in plan.trials}
    record_sweep(rd, started=started, finished=time.time(), resume=resume, records=records)
    return records
