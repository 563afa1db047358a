"""The Ray Tune trainable: one trial = train one model, then evaluate it with parallel Ray tasks.

A thin adapter around ``jobs.training.train`` and ``jobs.evaluation.evaluate_shard``, which know
nothing of Ray. The trial's placement group has bundle 0 for the trainable itself and
``eval_workers`` more bundles that hold room for its evaluation tasks (Tune captures the tasks a
trial launches into its placement group; on a cluster of small nodes those bundles may sit on
other nodes than the trial). Only the sweep imports this module.

Restart and resume rules (what makes ``--max-failures``, a lost node and ``mpo sweep --resume``
safe):
- training resumes from ``trials/<model_id>/state.pt`` (written every epoch, before the Tune
  checkpoint that records the epoch), and a trial whose ``trial.json`` says ``trained`` with its
  ``checkpoint.pt`` present skips training entirely;
- every shard is written once: ``evaluate_shard`` skips a file that exists with the same content
  key, so a re-launched task neither recomputes nor duplicates rows; a task lost with its node
  is run again by Ray (``max_retries``) once its bundle has a node again.

What each trial and task records (the evidence of where work ran): trial.json's
``placements`` (one per attempt: node, host, pid, the CPUs/GPUs Ray assigned, the GPU ids, the
device used, torch's threads) and ``epoch_runs`` (epochs trained over all attempts), and per
shard ``trials/<model_id>/shards/<shard>.json`` (one entry per run of its task, with
``computed``: whether that run wrote the file). Threads: torch runs as many threads as the
bundle has whole CPUs (at least one), in the trial and in each task.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from jobs.io import read_json, write_json_atomic
from jobs.run_folder import SHARD_FILES, RunFolder, ShardEntry, file_records
from orchestrator import fault_injection
from orchestrator.fault_injection import Faults
from orchestrator.metrics import TrialMeter
from orchestrator.naming import shard_task_name
from orchestrator.resources import set_torch_threads, torch_threads

if TYPE_CHECKING:
    from jobs.external import ExternalModel
    from jobs.suite import EvalSuite
    from orchestrator.plan import TrialPayload

PROGRESS_FILE = "progress.json"


def flatten(prefix: str, obj: object, out: dict[str, float] | None = None) -> dict[str, float]:
    """{"a": {"b": 1}} -> {"prefix/a/b": 1}, keeping only numbers (Tune's metrics)."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        for key, value in obj.items():
            flatten(f"{prefix}/{key}" if prefix else str(key), value, out)
    elif isinstance(obj, bool | int | float):
        out[prefix] = obj
    return out


def _device() -> str:
    """cuda when Ray assigned this worker a GPU (it sets CUDA_VISIBLE_DEVICES to it) and torch
    can use it; else cpu: a GPU bundle on a node whose torch has no CUDA (the tests' fake GPUs,
    a broken driver) runs on the CPU, and ``placements`` records both facts."""
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _where(threads: dict[str, int]) -> dict[str, Any]:
    """Where this process runs, what Ray gave it, and torch's ``threads`` as set."""
    ctx = ray.get_runtime_context()
    assigned = ctx.get_assigned_resources()
    return {
        "node_id": ctx.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "resources": {k: assigned[k] for k in ("CPU", "GPU") if k in assigned},
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "device": _device(),
        "threads": threads,
        "started": _now(),
        "process_started": _process_started(),
    }


def _process_started() -> str | None:
    """When this worker process started (the gap to ``started`` is its start-up and imports)."""
    try:
        import psutil

        stamp = psutil.Process(os.getpid()).create_time()
    except Exception:  # psutil comes with ray[default]; without it the record goes without
        return None
    return dt.datetime.fromtimestamp(stamp, dt.timezone.utc).isoformat(timespec="milliseconds")


def _tune_epoch() -> int | None:
    """The epoch recorded in the Tune checkpoint this trial was (re)started from, if any."""
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        path = Path(d) / PROGRESS_FILE
        return int(read_json(path)["epoch"]) if path.exists() else None


def _report_epoch(metrics: dict[str, Any], *, model_id: str, total_epochs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mpo-ckpt-") as d:
        write_json_atomic(Path(d) / PROGRESS_FILE,
                          {"model_id": model_id, "epoch": int(metrics["epoch"])})
        tune.report(
            {**flatten("", metrics), "phase": "train", "epochs": total_epochs},
            checkpoint=tune.Checkpoint.from_directory(d),
        )


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of a file, None when absent: a file this task wrote (atomically, by a
    rename) has another identity afterwards."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def evaluate_shard_task(
    checkpoint: str | Path | ExternalModel,  # an evaluation-only model: its spec
    suite: EvalSuite,
    shard: ShardEntry,
    *,
    run_dir: str,
    data_dir: str | None,
    label: str,
    groups: dict[str, dict[str, list[str]]],
    cpus: float,
    faults: Faults,
    meter: TrialMeter | None = None,
) -> str:
    """One evaluation shard, run as a Ray task inside the trial's placement group (or inline in
    the trial); its side record notes where each run ran and whether it computed the file."""
    from jobs.evaluation import evaluate_shard

    rd = RunFolder(Path(run_dir))
    target = rd.shard_path(shard)
    run = uuid.uuid4().hex[:12]
    where = _where(set_torch_threads(torch_threads(cpus)))
    rd.note_shard_run(shard.model_id, target.name, run, **where)
    fault_injection.before_shard(faults, rd.path, label)  # tests only (MPO_TEST_FAULTS)
    before = _identity(target)
    t0 = time.perf_counter()
    path = evaluate_shard(
        checkpoint, suite, shard.attack, shard.start, shard.stop, run_dir,
        data_dir=data_dir, device=where["device"], model_label=label, groups=list(groups),
    )  # fmt: skip
    seconds, computed = time.perf_counter() - t0, _identity(path) != before
    rd.note_shard_run(shard.model_id, target.name, run, finished=_now(), seconds=round(seconds, 3),
                      computed=computed)
    if meter is not None:  # mpo's metrics on the dashboard (orchestrator.metrics)
        meter.shard_done(shard.attack, shard.stop - shard.start, seconds, computed)
    return str(path)


def _fan_out(trial: TrialPayload, checkpoint: Path | ExternalModel, rd: RunFolder,
             settings: dict[str, Any], faults: Faults,
             meter: TrialMeter) -> tuple[list[str], list[dict[str, Any]]]:
    """Fan the trial's shards out as Ray tasks, each named after what it holds (the dashboard),
    or run them here, one at a time, without evaluation bundles; (result paths, failed shards)."""
    kwargs = dict(run_dir=str(rd.path), data_dir=settings["data_dir"], label=trial.label,
                  groups=trial.groups, faults=faults, meter=meter)
    paths: list[str] = []
    failed: list[dict[str, Any]] = []
    total = len(trial.shards)
    if settings["eval_workers"] == 0:
        for shard in trial.shards:
            meter.shards(paths, failed=0, pending=total - len(paths))
            paths.append(evaluate_shard_task(checkpoint, trial.suite, shard,
                                             cpus=settings["cpus_per_trial"], **kwargs))
            tune.report({"phase": "eval", "shards_done": len(paths), "shards_total": total})
        meter.shards(paths, failed=0, pending=0, final=True)
        return paths, failed
    task = ray.remote(evaluate_shard_task)
    options = dict(num_cpus=settings["eval_cpus"], num_gpus=settings["eval_gpus"],
                   max_retries=settings["shard_retries"], retry_exceptions=[OSError])
    suite_ref = ray.put(trial.suite)
    refs = {}
    for shard in trial.shards:
        eps = trial.suite.attack(shard.attack).ball().epsilon  # NaN: no l_p radius (rt, affine)
        name = shard_task_name(trial.label, shard.attack, shard.start, shard.stop,
                               None if math.isnan(eps) else eps)
        ref = task.options(**options, name=name).remote(
            checkpoint, suite_ref, shard, cpus=settings["eval_cpus"], **kwargs)
        refs[ref] = shard
    pending = list(refs)
    meter.shards(paths, failed=0, pending=len(pending))
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            try:
                paths.append(ray.get(ref))
            except ray.exceptions.RayError as err:
                failed.append({**refs[ref].to_dict(),
                               "error": f"{type(err).__name__}: {str(err)[-2000:]}"})
        meter.shards(paths, failed=len(failed), pending=len(pending), final=not pending)
        tune.report({"phase": "eval", "shards_done": len(paths), "shards_failed": len(failed),
                     "shards_total": total})
    return paths, failed


def audit_task(model: Path | ExternalModel, trial: TrialPayload, paths: list[str], family: str,
               budget: float, *, run_dir: str, data_dir: str | None, cpus: float) -> list[str]:
    """The strength audit of one family at one budget point of a trial's model (a Ray task in
    the trial's placement group, or inline): AutoAttack's standard version beside the suite."""
    from jobs.audit import AuditPoint, AuditRequest, audit_model
    from jobs.results import read_results

    where = _where(set_torch_threads(torch_threads(cpus)))
    point = AuditPoint(family, budget, trial.suite.full_radius[family] * budget)
    return [str(p) for p in audit_model(
        model, trial.suite, read_results(paths), request=AuditRequest(**trial.audit or {}),
        run_dir=run_dir, n_test=trial.n_test, families=[family], data_dir=data_dir,
        device=where["device"], label=trial.label, points=[point])]


def _audit(t: _Trial, model: Path | ExternalModel, paths: list[str]) -> list[str]:
    """The trial's strength audit, when its grid asks for one: one Ray task per (family,
    budget) point (inline without evaluation bundles)."""
    from jobs.audit import AuditRequest, audit_points, suite_budgets

    p = t.payload
    if p.audit is None:
        return []
    families = list(dict.fromkeys(f for g in p.groups.values() for f in g["families"]))
    points = audit_points(p.suite.full_radius, suite_budgets(p.suite), families,
                          AuditRequest(**p.audit))
    kwargs = dict(run_dir=str(t.rd.path), data_dir=t.settings["data_dir"])
    if t.settings["eval_workers"] == 0:
        return [f for pt in points for f in audit_task(
            model, p, paths, pt.family, pt.budget, cpus=t.settings["cpus_per_trial"], **kwargs)]
    task = ray.remote(audit_task)
    options = dict(num_cpus=t.settings["eval_cpus"], num_gpus=t.settings["eval_gpus"],
                   max_retries=t.settings["shard_retries"])
    refs = [task.options(**options, name=f"{p.label} · audit {pt.family}@{pt.budget:g}").remote(
        model, p, paths, pt.family, pt.budget, cpus=t.settings["eval_cpus"], **kwargs)
        for pt in points]
    return [f for files in ray.get(refs) for f in files]


class _Trial:
    """One trial's run: its payload, run folder and record, and the wall time it has used."""

    def __init__(self, config: dict[str, Any], payload: TrialPayload) -> None:
        self.payload = payload
        self.settings: dict[str, Any] = config["settings"]
        self.faults: Faults = config.get("faults") or {}
        self.rd = RunFolder(Path(config["run_dir"]))
        self.out = self.rd.trial_dir(self.payload.model_id)
        self.began = time.time()
        self.record = self.rd.trial_record(self.payload.model_id)
        self.previous_wall = float(self.record.get("wall_seconds") or 0.0)
        # mpo's metrics on the dashboard (orchestrator.metrics)
        self.meter = TrialMeter(self.rd.path.name, payload.label, payload.model_id,
                                dict(payload.groups))

    def wall(self) -> float:
        return round(self.previous_wall + time.time() - self.began, 3)

    def update(self, **fields: Any) -> dict[str, Any]:
        self.record = self.rd.update_trial(self.payload.model_id, **fields)
        return self.record

    def start(self) -> str:
        """Record this attempt (where it runs, with how many threads); returns its device."""
        attempt = int(self.record.get("attempts", 0)) + 1
        threads = set_torch_threads(torch_threads(self.settings["cpus_per_trial"]))
        where = {"attempt": attempt, **_where(threads)}
        self.update(model_id=self.payload.model_id, label=self.payload.label, state="training",
                    attempts=attempt, tune_trial_id=tune.get_context().get_trial_id(),
                    restored_from_tune_epoch=_tune_epoch(), device=where["device"], error=None,
                    placements=[*self.record.get("placements", []), where])
        return str(where["device"])


def _train(t: _Trial, device: str) -> Path:
    """Train the model (resuming from its state), unless its checkpoint is already there;
    returns the checkpoint."""
    from jobs.training import CHECKPOINT_FILE, train

    checkpoint = t.out / CHECKPOINT_FILE
    if t.record.get("trained") and checkpoint.exists():
        return checkpoint
    p = t.payload
    epoch_runs = int(t.record.get("epoch_runs", 0))
    # this attempt's interval of training (orchestrator.utilisation): its end moves forward at
    # every epoch, so an attempt cut off mid-training still counts the epochs it finished
    threads = (t.record.get("placements") or [{}])[-1].get("threads") or {}
    runs = [*t.record.get("train_runs", []), {"started": _now(), "threads": threads}]

    def note_run() -> None:
        runs[-1]["finished"] = _now()
        t.update(train_runs=runs)

    def on_epoch(metrics: dict[str, Any]) -> None:
        nonlocal epoch_runs
        epoch_runs += 1
        runs[-1]["finished"] = _now()
        t.update(epoch_runs=epoch_runs, train_runs=runs)
        t.meter.epoch(metrics, p.epochs)
        _report_epoch(metrics, model_id=p.model_id, total_epochs=p.epochs)
        fault_injection.after_epoch(t.faults, t.rd.path, p.label, int(metrics["epoch"]))  # tests

    result = train(p.config, t.out, data_dir=t.settings["data_dir"],
                   download=t.settings["download"], device=device, on_epoch=on_epoch, resume=True)
    note_run()
    resumed = list(t.record.get("resumed_from_epochs", []))
    if result.resumed_from_epoch:
        resumed.append(result.resumed_from_epoch)
    t.update(trained=True, resumed_from_epochs=resumed, epochs_trained=len(result.metrics),
             final_train_metrics=result.metrics[-1] if result.metrics else {},
             train_cost=result.cost, train_wall_seconds=t.wall())
    return checkpoint


def _soup(t: _Trial) -> Path:
    """A soup trial's model: its ingredients' weights averaged into its ``checkpoint.pt``
    (``jobs.soup``), once; its cost counts the ingredients' lineages."""
    from jobs.soup import make_soup
    from jobs.training import CHECKPOINT_FILE

    checkpoint = t.out / CHECKPOINT_FILE
    if not (t.record.get("trained") and checkpoint.exists()):
        soup = t.payload.config["soup"]
        _, record = make_soup([t.rd.trial_dir(m) / CHECKPOINT_FILE for m in soup["ingredients"]],
                              soup["weights"], checkpoint, family=soup["family"],
                              labels=soup["labels"])
        if record["soup"]["model_id"] != t.payload.model_id:
            raise RuntimeError(f"the soup made from {soup['ingredients']} has id "
                               f"{record['soup']['model_id']}, the plan says {t.payload.model_id}")
        from jobs.checkpoint import load_checkpoint

        cost = (load_checkpoint(checkpoint)["extra"] or {}).get("cost")
        t.update(trained=True, train_cost=cost, train_wall_seconds=t.wall())
    return checkpoint


def _report(t: _Trial, paths: list[str]) -> None:
    """Summarise the results, record the trial done (with each results file's size and
    sha256, taken after every task returned) and report it to Tune."""
    from jobs.results import summarize

    summary = summarize(paths, t.payload.groups).get(t.payload.model_id, {})
    t.update(state="done", summary=summary, failed_shards=[], shards=len(paths),
             wall_seconds=t.wall(), **{SHARD_FILES: file_records(paths)})
    tune.report({**flatten("eval", summary), "phase": "done", "shards_done": len(paths),
                 "shards_total": len(paths)})


def run_trial(config: dict[str, Any], payloads: dict[str, TrialPayload]) -> None:
    """Tune function trainable: train, fan the evaluation out, report. ``config``: {"model_id",
    "run_dir", "settings", "faults"}; ``payloads``: every trial's ``orchestrator.plan.TrialPayload``
    by model id (``tune.with_parameters``)."""
    from jobs.external import external_spec
    from jobs.training import CHECKPOINT_FILE

    t = _Trial(config, payloads[config["model_id"]])
    if t.record.get("state") == "done" and (t.out / CHECKPOINT_FILE).exists():
        # Finished before its actor was lost (or the driver died), but Tune had not seen it end:
        # report, redo nothing.
        shards = t.record.get("shards", 0)
        tune.report({**flatten("eval", t.record.get("summary") or {}), "phase": "done",
                     "shards_done": shards, "shards_total": shards})
        return
    device = t.start()
    try:
        external = external_spec(t.payload.config)  # evaluation-only: nothing to train
        soup = t.payload.config.get("soup") is not None  # evaluation-only: averaged weights
        model = external if external is not None else _soup(t) if soup else _train(t, device)
        t.update(state="evaluating", wall_seconds=t.wall())
        paths, failed = _fan_out(t.payload, model, t.rd, t.settings, t.faults, t.meter)
        if failed:
            t.update(failed_shards=failed)
            raise RuntimeError(
                f"{len(failed)} of {len(failed) + len(paths)} evaluation shards of "
                f"{t.payload.model_id} failed after {t.settings['shard_retries']} retries; "
                f"first: {failed[0]['error'][:500]}")
        if t.payload.audit is not None:
            t.update(state="auditing")
            t.update(audit_files=_audit(t, model, paths))
        _report(t, paths)
    except BaseException as err:
        t.update(state="error", error=f"{type(err).__name__}: {err}"[:4000], wall_seconds=t.wall())
        raise
