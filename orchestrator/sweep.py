"""The sweep driver: a Ray connection, a resource check, and Ray Tune.

``orchestrator.runs.prepare_run`` (no Ray) writes the run folder; ``connect`` joins a Ray
cluster (or starts a local one); ``check_resources`` refuses resources the cluster cannot give, and runs one Tune
trial per model (``orchestrator.trainable.run_trial``), or restores an interrupted run with
``Tuner.restore``. Importing this module imports Ray: only ``mpo sweep`` does.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune
from rich.console import Console

from orchestrator.grid import SweepPlan
from orchestrator.rundir import RunDir
from orchestrator.runs import Resources, SweepError, record_sweep, trial_data_dir
from orchestrator.trainable import run_trial

# ----------------------------------------------------------------------------------------------
# Ray


@dataclass
class Cluster:
    started_here: bool
    address: str
    dashboard_url: str | None
    resources: dict[str, float]
    max_resources: dict[str, float] | None  # from an autoscaler config, when there is one
    largest_node: dict[str, float]


def connect(address: str | None, *, num_cpus: int | None = None) -> Cluster:
    """Join ``address`` (``auto``, ``ray://...``, host:port), reuse a connection this process
    already has, or start a local cluster with the dashboard bound to 127.0.0.1."""
    started = False
    url = None
    if ray.is_initialized():
        pass
    elif address:
        try:
            ctx = ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise SweepError(f"cannot connect to the Ray cluster at --address {address}: {err}") from None
        url = ctx.dashboard_url
    else:
        ctx = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                       log_to_driver=False, logging_level=logging.WARNING)
        started, url = True, ctx.dashboard_url
    resources = {k: float(v) for k, v in ray.cluster_resources().items()}
    largest: dict[str, float] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for key in ("CPU", "GPU"):
                largest[key] = max(largest.get(key, 0.0), float(node["Resources"].get(key, 0.0)))
    try:
        from ray._private.state import state

        max_res = state.get_max_resources_from_cluster_config()
    except Exception:  # not every cluster has an autoscaler config; this is only a hint
        max_res = None
    return Cluster(
        started_here=started,
        address=ray.get_runtime_context().gcs_address,
        dashboard_url=f"http://{url}" if url and not url.startswith("http") else url,
        resources=resources,
        max_resources={k: float(v) for k, v in max_res.items()} if max_res else None,
        largest_node=largest,
    )


def check_resources(res: Resources, cluster: Cluster) -> None:
    """Refuse at once what would leave trials pending forever."""
    have_gpus = max(cluster.resources.get("GPU", 0.0), (cluster.max_resources or {}).get("GPU", 0.0))
    need = res.totals()
    if need.get("GPU", 0.0) > 0 and have_gpus <= 0:
        raise SweepError(
            f"a trial asks for {need['GPU']:g} GPU (--gpus-per-trial {res.gpus_per_trial:g}, "
            f"{res.eval_workers} evaluation workers x {res.eval_gpus:g}) but the Ray cluster at "
            f"{cluster.address} has no GPUs (resources: CPU {cluster.resources.get('CPU', 0):g}). "
            "Run with --gpus-per-trial 0 on this cluster, or connect to one with GPUs (--address)."
        )
    limits = cluster.max_resources or cluster.largest_node
    for bundle in res.bundles():
        for key, value in bundle.items():
            if value > limits.get(key, 0.0) + 1e-9:
                raise SweepError(
                    f"a trial needs a bundle {bundle} but the largest node of the cluster at "
                    f"{cluster.address} has {key} {limits.get(key, 0.0):g}; lower "
                    "--cpus-per-trial / --gpus-per-trial / --cpus-per-eval-worker"
                )
    total_limits = cluster.max_resources or cluster.resources
    for key, value in need.items():
        if value > total_limits.get(key, 0.0) + 1e-9:
            raise SweepError(
                f"one trial reserves {key} {value:g} ({res.bundles()}) but the cluster at "
                f"{cluster.address} has {key} {total_limits.get(key, 0.0):g} in all; lower "
                "--eval-workers or the per-trial resources"
            )


def trial_name(trial: Any) -> str:
    return str(trial.config["trial"]["model_id"])


def trial_payload(plan: SweepPlan, model_id: str) -> dict[str, Any]:
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
    settings: dict[str, Any],
    *,
    cluster: Cluster,
    resume: bool,
    console: Console,
    live: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the Tune experiment in ``rd/tune``; returns {model_id: trial.json}."""
    from orchestrator.progress import LiveTable

    # Tune's own console output stays quiet: the live table is the display. The legacy output
    # path honours verbose=0 (the new one still prints a banner); experiment-state snapshot
    # warnings are expected here (a checkpoint per epoch with num_to_keep=1).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    res = Resources(**settings["resources"])
    trainable = tune.with_resources(run_trial, tune.PlacementGroupFactory(res.bundles()))
    param_space = {
        "trial": tune.grid_search([trial_payload(plan, mid) for mid in plan.trials]),
        "run_dir": str(rd.path),
        "settings": {**settings["trial_settings"],
                     "data_dir": trial_data_dir(settings["trial_settings"]["data_dir"]),
                     "cpus_per_trial": res.cpus_per_trial,
                     "eval_workers": res.eval_workers, "eval_cpus": res.eval_cpus,
                     "eval_gpus": res.eval_gpus},
        "faults": settings.get("faults") or {},
    }
    table = LiveTable({mid: t.manifest_entry() for mid, t in plan.trials.items()}, console=console,
                      title=f"mpo sweep {plan.grid.name}: {rd.path}")
    run_config = tune.RunConfig(
        name=rd.tune_dir.name,
        storage_path=str(rd.path),
        verbose=0,
        callbacks=[table],
        failure_config=tune.FailureConfig(max_failures=settings["max_failures"]),
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
    if live:
        table.start()
    started = time.time()
    try:
        tuner.fit()
    finally:
        if live:
            table.stop()
    records = {mid: rd.trial_record(mid) for mid in plan.trials}
    record_sweep(rd, started=started, finished=time.time(), resume=resume, records=records)
    return records


