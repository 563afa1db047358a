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
from orchestrator import fault_injection
from orchestrator.fault_injection import Faults
from orchestrator.metrics import TrialMeter
from orchestrator.naming import attack_radius, shard_task_name
from orchestrator.resources import set_torch_threads, torch_threads
from orchestrator.runfolder import RunDir

if TYPE_CHECKING:
    from jobs.external import ExternalModel
    from jobs.suite import EvalSuite

PROGRESS_FILE = "progress.json"


class ShardsFailedError(RuntimeError):
    """Evaluation shards that failed after all their retries."""


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
    }


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
    attack: str,
    start: int,
    stop: int,
    *,
    run_dir: str,
    model_id: str,
    data_dir: str | None,
    label: str,
    groups: list[str],
    cpus: float,
    faults: Faults,
    meter: TrialMeter | None = None,
) -> str:
    """One evaluation shard, run as a Ray task inside the trial's placement group (or inline in
    the trial); its side record notes where each run ran and whether it computed the file."""
    from jobs.evaluation import evaluate_shard, shard_path

    rd = RunDir(Path(run_dir))
    target = shard_path(run_dir, model_id, attack, start, stop)
    run = uuid.uuid4().hex[:12]
    where = _where(set_torch_threads(torch_threads(cpus)))
    rd.note_shard_run(model_id, target.name, run, **where)
    fault_injection.before_shard(faults, rd.path, label)  # tests only (MPO_TEST_FAULTS)
    before = _identity(target)
    t0 = time.perf_counter()
    path = evaluate_shard(
        checkpoint, suite, attack, start, stop, run_dir,
        data_dir=data_dir, device=where["device"], model_label=label, groups=groups,
    )  # fmt: skip
    seconds, computed = time.perf_counter() - t0, _identity(path) != before
    rd.note_shard_run(model_id, target.name, run, finished=_now(), seconds=round(seconds, 3),
                      computed=computed)
    if meter is not None:  # metrics (orchestrator.metrics)
        meter.shard_done(attack, stop - start, seconds, computed)
    return str(path)


def _evaluate(trial: dict[str, Any], checkpoint: Path | ExternalModel, rd: RunDir,
              settings: dict[str, Any], faults: Faults,
              meter: TrialMeter) -> tuple[list[str], list[dict[str, Any]]]:
    """Fan the trial's shards out as Ray tasks; (result paths, failed shards)."""
    from jobs.evaluation import plan_shards

    shards = [
        (attack, start, stop)
        for attack in trial["attacks"]
        for start, stop in plan_shards(trial["n_test"], trial["shard_size"])
    ]
    kwargs = dict(
        run_dir=str(rd.path), model_id=trial["model_id"], data_dir=settings["data_dir"],
        label=trial["label"], groups=list(trial["groups"]), faults=faults, meter=meter,
    )  # fmt: skip
    paths: list[str] = []
    failed: list[dict[str, Any]] = []
    total = len(shards)
    if settings["eval_workers"] == 0:  # no bundles for tasks: evaluate here, one shard at a time
        for attack, start, stop in shards:
            meter.shards(paths, failed=0, pending=total - len(paths))
            paths.append(evaluate_shard_task(checkpoint, trial["suite"], attack, start, stop,
                                             cpus=settings["cpus_per_trial"], **kwargs))
            tune.report({"phase": "eval", "shards_done": len(paths), "shards_total": total})
        meter.shards(paths, failed=0, pending=0, final=True)
        return paths, failed

    task = ray.remote(evaluate_shard_task)
    options = dict(
        num_cpus=settings["eval_cpus"],
        num_gpus=settings["eval_gpus"],
        max_retries=settings["shard_retries"],
        retry_exceptions=[OSError],
    )
    suite_ref = ray.put(trial["suite"])
    refs = {}
    for attack, start, stop in shards:  # each task named after what it holds (the dashboard)
        name = shard_task_name(trial["label"], attack, start, stop,
                               attack_radius(trial["suite"].attack(attack)))
        ref = task.options(**options, name=name).remote(
            checkpoint, suite_ref, attack, start, stop, cpus=settings["eval_cpus"], **kwargs)
        refs[ref] = (attack, start, stop)
    pending = list(refs)
    meter.shards(paths, failed=0, pending=len(pending))
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            attack, start, stop = refs[ref]
            try:
                paths.append(ray.get(ref))
            except ray.exceptions.RayError as err:
                failed.append({"attack": attack, "start": start, "stop": stop,
                               "error": f"{type(err).__name__}: {str(err)[-2000:]}"})
        meter.shards(paths, failed=len(failed), pending=len(pending), final=not pending)
        tune.report({"phase": "eval", "shards_done": len(paths), "shards_failed": len(failed),
                     "shards_total": total})
    return paths, failed


def _shard_files(paths: list[str]) -> dict[str, dict[str, Any]]:
    """Size and sha256 of each results file, as the finished trial leaves them: later storage
    faults show as a difference (``analysis.loading.differs_from_record``). Taken here, after
    every task of the trial has returned, so no task rewrites a file after it was recorded."""
    from analysis.loading import file_sha256

    return {Path(p).name: {"bytes": Path(p).stat().st_size, "sha256": file_sha256(Path(p))}
            for p in paths}


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable. ``config``: {"trial": payload, "run_dir", "settings", "faults"}.

    The payload is built by ``orchestrator.tune_driver.trial_payload``: model_id, label, dataset,
    groups ({group: {"families", "affine"}}), config (TrainConfig dict), attacks (suite attack
    names), n_test, shard_size and suite (a jobs.suite.EvalSuite).
    """
    from analysis.loading import SHARD_FILES
    from jobs.external import external_spec
    from jobs.results import summarize
    from jobs.training import CHECKPOINT_FILE, train

    trial, settings = config["trial"], config["settings"]
    faults = config.get("faults") or {}
    rd = RunDir(Path(config["run_dir"]))
    mid, label = trial["model_id"], trial["label"]
    out = rd.trial_dir(mid)
    meter = TrialMeter.for_trial(trial, rd.path)  # metrics (orchestrator.metrics)
    began = time.time()
    record = rd.trial_record(mid)
    if record.get("state") == "done" and (out / CHECKPOINT_FILE).exists():
        # Finished before its actor was lost (or the driver died), but Tune had not seen it end:
        # report, redo nothing.
        summary = record.get("summary") or {}
        tune.report({**flatten("eval", summary), "phase": "done",
                     "shards_done": record.get("shards", 0), "shards_total": record.get("shards", 0)})
        return
    previous_wall = float(record.get("wall_seconds") or 0.0)
    attempt = int(record.get("attempts", 0)) + 1
    threads = set_torch_threads(torch_threads(settings["cpus_per_trial"]))
    where = {"attempt": attempt, **_where(threads)}
    record = rd.update_trial(
        mid, model_id=mid, label=label, state="training", attempts=attempt,
        tune_trial_id=tune.get_context().get_trial_id(), restored_from_tune_epoch=_tune_epoch(),
        device=where["device"], error=None, placements=[*record.get("placements", []), where],
    )  # fmt: skip

    def wall() -> float:
        return round(previous_wall + time.time() - began, 3)

    try:
        checkpoint = out / CHECKPOINT_FILE
        external = external_spec(trial["config"])  # evaluation-only: nothing to train
        if external is None and not (record.get("trained") and checkpoint.exists()):
            epochs = int(trial["config"]["epochs"])
            epoch_runs = int(record.get("epoch_runs", 0))

            def on_epoch(metrics: dict[str, Any]) -> None:
                nonlocal epoch_runs
                epoch_runs += 1
                rd.update_trial(mid, epoch_runs=epoch_runs)
                meter.epoch(metrics, epochs)
                _report_epoch(metrics, model_id=mid, total_epochs=epochs)
                # tests only (MPO_TEST_FAULTS)
                fault_injection.after_epoch(faults, rd.path, label, int(metrics["epoch"]))

            result = train(
                trial["config"], out, data_dir=settings["data_dir"], download=settings["download"],
                device=where["device"], on_epoch=on_epoch, resume=True,
            )  # fmt: skip
            resumed = list(record.get("resumed_from_epochs", []))
            if result.resumed_from_epoch:
                resumed.append(result.resumed_from_epoch)
            record = rd.update_trial(
                mid, trained=True, resumed_from_epochs=resumed, epochs_trained=len(result.metrics),
                final_train_metrics=result.metrics[-1] if result.metrics else {},
                train_cost=result.cost, train_wall_seconds=wall(),
            )  # fmt: skip
        rd.update_trial(mid, state="evaluating", wall_seconds=wall())
        paths, failed = _evaluate(trial, external or checkpoint, rd, settings, faults, meter)
        if failed:
            rd.update_trial(mid, failed_shards=failed)
            raise ShardsFailedError(
                f"{len(failed)} of {len(failed) + len(paths)} evaluation shards of {mid} failed "
                f"after {settings['shard_retries']} retries; first: {failed[0]['error'][:500]}"
            )
        summary = summarize(paths, trial["groups"]).get(mid, {})
        rd.update_trial(mid, state="done", summary=summary, failed_shards=[], shards=len(paths),
                        wall_seconds=wall(), **{SHARD_FILES: _shard_files(paths)})
        tune.report({**flatten("eval", summary), "phase": "done", "shards_done": len(paths),
                     "shards_total": len(paths)})
    except BaseException as err:
        rd.update_trial(mid, state="error", error=f"{type(err).__name__}: {err}"[:4000],
                        wall_seconds=wall())
        raise
