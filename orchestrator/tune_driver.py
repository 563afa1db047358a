"""The Ray side of ``mpo sweep``: connect to a cluster, and run the sweep on Ray Tune.

``connect`` (or ``session``, which also shuts down a cluster it started) joins a Ray cluster or
starts a local one, and describes it (``Cluster``, which
``orchestrator.resources.check_resources`` checks a trial's resources against); ``run_sweep``
runs one Tune trial per model (``orchestrator.trainable.run_trial``, as the trainable class
``orchestrator.trial_actor.MpoTrial``) in a run folder that
``orchestrator.runfolder.prepare_run`` wrote, or, resuming, one per model the run folder shows
unfinished (``orchestrator.runfolder.prepare_resume``), each in a fresh Tune experiment
``tune/driver-<n>``. The files are the truth, not Tune's saved state: a trial Tune thought
finished is run again if one of its results files was lost, and one it thought running is simply
started again (it resumes from its own files). Importing this module imports Ray: only ``mpo
sweep`` does, once a sweep runs.

Signals: while the trials run, SIGINT and SIGTERM stop the driver at once with
``SweepInterrupted`` (Tune's own handler, which waits for a last experiment snapshot, is off;
nothing is lost: every epoch and every shard is already on disk). A second signal while the
driver winds down is ignored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import ray
from ray import tune
from ray.job_config import JobConfig
from ray.tune.search import Searcher

from jobs.errors import MpoError
from jobs.run_folder import RunFolder
from orchestrator.lineage import Schedule
from orchestrator.plan import SweepPlan
from orchestrator.progress import LiveTable
from orchestrator.resources import Cluster, trial_data_dir
from orchestrator.runfolder import SweepSettings, record_sweep
from orchestrator.trackers import make_trackers
from orchestrator.trial_actor import trial_class

if TYPE_CHECKING:
    from ray.tune import Callback
    from ray.tune.experiment import Trial
    from rich.console import Console


def local_system_config(num_cpus: int | None) -> dict[str, int]:
    """Ray settings of a local cluster mpo starts. Ray keeps at most as many idle worker
    processes as the node has unreserved CPUs and kills the rest after a second; in a sweep the
    trials' placement groups reserve every CPU, so each trial's evaluation tasks, and each new
    trial, started a fresh process that spent seconds importing torch. Keeping a few more
    (CPUs + 4) lets them reuse the processes earlier trials left: the quickstart's
    ``mpo sweep toy`` took 0.89x the time (43.1 s against 49.3 s, medians of 3 on 2 cores)."""
    return {"num_workers_soft_limit": (num_cpus or os.cpu_count() or 1) + 4}


def _init(address: str | None, num_cpus: int | None, job: dict[str, str] | None) -> str | None:
    """``ray.init``: join ``address``, or start a local cluster with the dashboard bound to
    127.0.0.1; returns the dashboard URL, if any. ``job``: the driver job's metadata
    (``orchestrator.naming.job_metadata``: its ``job_name`` is the Jobs page's Name)."""
    job_config = JobConfig(metadata=dict(job or {}))
    if not address:
        return ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                        log_to_driver=False, logging_level=logging.WARNING,
                        job_config=job_config,
                        _system_config=local_system_config(num_cpus)).dashboard_url
    try:
        return ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                        job_config=job_config).dashboard_url
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise MpoError(f"cannot connect to the Ray cluster at --address {address}: {err}") from None


def _max_resources() -> dict[str, float] | None:
    """The cluster's largest size from its autoscaler config (None without one)."""
    try:
        from ray._private.state import state

        max_res = state.get_max_resources_from_cluster_config()
    except Exception:  # not every cluster has an autoscaler config; this is only a hint
        return None
    return {k: float(v) for k, v in max_res.items()} if max_res else None


def connect(address: str | None, *, num_cpus: int | None = None,
            job: dict[str, str] | None = None) -> Cluster:
    """Join ``address`` (``auto``, ``ray://...``, host:port), reuse a connection this process
    already has (a test session's cluster: its job keeps its own metadata), or start a local
    cluster; ``job``: the driver job's metadata."""
    reuse = ray.is_initialized()
    url = None if reuse else _init(address, num_cpus, job)
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
def session(address: str | None, *, num_cpus: int | None = None,
            job: dict[str, str] | None = None) -> Iterator[Cluster]:
    """``connect``, and shut the local cluster down at the end if this session started it."""
    cluster = connect(address, num_cpus=num_cpus, job=job)
    try:
        yield cluster
    finally:
        if cluster.started_here:
            ray.shutdown()


def trial_name(trial: Trial) -> str:
    return str(trial.config["model_id"])


class SweepInterrupted(KeyboardInterrupt):
    """The driver got SIGINT or SIGTERM. A KeyboardInterrupt, so that Ray and Tune, which catch
    Exception, let it through as they let Ctrl+C through."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within: the first SIGINT or SIGTERM ends the block with ``SweepInterrupted``. Ray turns
    an exception raised by a signal handler inside its waits into a bare KeyboardInterrupt;
    the signal that came is put back here. After a signal both are ignored for good (the
    process is on its way out: shutting Ray down must not itself be interrupted); without one,
    the previous handlers come back."""
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not fired:
            fired.append(signum)
            raise SweepInterrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt as err:
        if fired and not isinstance(err, SweepInterrupted):
            raise SweepInterrupted(fired[0]) from None
        raise
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_IGN if fired else old)


class LineageSearcher(Searcher):
    """Hands Tune one trial at a time, each as soon as the models it needs are done
    (``orchestrator.lineage.Schedule``): Tune asks again whenever it has room, so independent
    trials run side by side, a child starts as its parent finishes, and no trial waits while
    holding a placement group. A trial that fails for good (after ``--max-failures``) leaves
    its descendants not run: their trial.json says ``not_run`` and why."""

    def __init__(self, plan: SweepPlan, rd: RunFolder, todo: list[str], table: LiveTable) -> None:
        super().__init__()
        self.rd, self.table = rd, table
        done = {mid for mid in plan.trials
                if mid not in todo and rd.trial_record(mid).get("state") == "done"}
        self.schedule = Schedule(list(todo), {m: t.parents for m, t in plan.trials.items()},
                                 {m: t.label for m, t in plan.trials.items()}, done=done)
        self.live: dict[str, str] = {}  # Tune trial id -> model id
        self._not_run(list(self.schedule.blocked))

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True  # the searcher owns the one parameter, model_id

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Nothing to save: the run folder's files are the sweep's state (a resume reads them)."""

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        """Nothing to restore (see ``save_to_dir``)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        mid = self.schedule.next_ready()
        if mid is None:
            return Searcher.FINISHED if self.schedule.finished() else None
        self.live[trial_id] = mid
        return {"model_id": mid}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        mid = self.live.pop(trial_id, None)
        if mid is None:
            return
        reason = None
        if error:
            reason = str(self.rd.trial_record(mid).get("error") or "the trial failed")
            reason = reason.splitlines()[0][:300]
        self._not_run(self.schedule.complete(mid, error=reason))

    def _not_run(self, mids: list[str]) -> None:
        for mid in mids:
            why = self.schedule.blocked[mid]
            self.rd.update_trial(mid, model_id=mid, state="not_run", error=f"not run: {why}")
            self.table.not_run(mid, why)


def _experiment_name(rd: RunFolder) -> str:
    """``driver-<n>``: this driver run's own Tune experiment folder under ``tune/``."""
    n = len(list(rd.tune_dir.glob("driver-*"))) if rd.tune_dir.is_dir() else 0
    return f"driver-{n + 1}"


def run_sweep(
    plan: SweepPlan,
    rd: RunFolder,
    settings: SweepSettings,
    *,
    todo: list[str],
    resume: bool,
    console: Console,
    callbacks: Sequence[Callback] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the trials ``todo`` (model ids) in a new Tune experiment under ``rd/tune``; returns
    {model_id: trial.json} of every trial of the plan. run.json records the driver run, also when
    a signal ends it (``SweepInterrupted`` then propagates). ``callbacks``: the trackers
    (``orchestrator.trackers.make_trackers``; by default TensorBoard only)."""
    # Tune's own console output stays quiet: the live table is the display. The legacy output
    # path honours verbose=0 (the new one still prints a banner); experiment-state snapshot
    # warnings are expected here (a checkpoint per epoch with num_to_keep=1); a failed trial is
    # one line of the live table's, not Tune's traceback. SIGINT is ours (``interruptible``),
    # not Tune's.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    started = time.time()
    interrupted: str | None = None
    try:
        if todo:
            with interruptible():
                if callbacks is None:
                    callbacks = make_trackers(plan, rd.path)
                _fit(plan, rd, settings, todo, console, callbacks)
    except SweepInterrupted as err:
        interrupted = str(err)
        raise
    finally:
        records = {mid: rd.trial_record(mid) for mid in plan.trials}
        cpus = ray.cluster_resources().get("CPU") if ray.is_initialized() else None
        record_sweep(rd, started=started, finished=time.time(), resume=resume, records=records,
                     trials_run=len(todo), interrupted=interrupted, cpus=cpus, ran=todo)
    return records


def _fit(plan: SweepPlan, rd: RunFolder, settings: SweepSettings, todo: list[str],
         console: Console, callbacks: Sequence[Callback]) -> None:
    res = settings.resources
    # Each trial's payload travels through the object store; its Tune config names the model
    # only, so Tune never copies or flattens the payload. MpoTrial takes its bundles from the
    # config and names its actors after their model (orchestrator.trial_actor).
    trainable = trial_class({mid: plan.payload(mid) for mid in todo})
    table = LiveTable({mid: plan.trials[mid].to_dict() for mid in todo}, console=console,
                      title=f"mpo sweep {plan.grid.name}: {rd.path}")
    searcher = LineageSearcher(plan, rd, todo, table)
    param_space = {
        "run_dir": str(rd.path),
        "settings": {"data_dir": trial_data_dir(settings.data_dir),
                     "download": settings.download, "shard_retries": settings.shard_retries,
                     "cpus_per_trial": res.cpus_per_trial,
                     "eval_workers": res.eval_workers, "eval_cpus": res.eval_cpus,
                     "eval_gpus": res.eval_gpus, "bundles": res.bundles()},
        "faults": settings.faults,
    }
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(trial_name_creator=trial_name, search_alg=searcher,
                                    num_samples=len(todo), trial_dirname_creator=trial_name,
                                    reuse_actors=False),
        run_config=tune.RunConfig(
            name=_experiment_name(rd),
            storage_path=str(rd.tune_dir),
            verbose=0,
            callbacks=[table, *callbacks],
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    table.start()
    try:
        tuner.fit()
    finally:
        table.stop()
