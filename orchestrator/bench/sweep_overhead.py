"""Group 4, ``sweep``: a Ray Tune sweep of N trivial ``toy`` trials against the same work in one
process, and the evaluation fan-out (``jobs.evaluation.evaluate_shard`` as Ray tasks) with 1 vs 2
workers. Driven with ``ray.tune`` directly through a thin trainable calling ``train``.

Ray is imported when these figures are measured, not with the module (``mpo bench --no-sweep``
does not start it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from orchestrator.bench.figures import Figure, per_rep, ratio_figure, skipped
from orchestrator.bench.workload import Settings

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.remote_function import RemoteFunction

    from jobs.suite import EvalSuite

SWEEP_TITLES = {
    "sweep/tune_vs_inprocess": "Tune sweep (1 at a time) / same work in one process",
    "sweep/per_trial_overhead": "Tune overhead per trial",
    "sweep/tune_parallel_vs_inprocess": "Tune sweep (2 at a time) / one process",
    "sweep/eval_fanout_speedup": "evaluation fan-out: 1 worker / 2 workers",
}
#: hidden width of the fan-out's model: ~0.5 s per shard on one core, enough work that the
#: task overhead does not dominate
FANOUT_HIDDEN = 2048


def _toy_train_config(i: int, *, n_train: int = 2000) -> dict[str, Any]:
    return {
        "label": f"Adv_max-{i}",
        "dataset": {"name": "toy", "params": {"d": 99, "alpha": 2.0}, "n_train": n_train},
        "model": {"name": "linear"},
        "optimizer": {"name": "adam", "lr": 1e-2},
        "strategy": "max",
        "attacks": [{"type": "linf", "epsilon": 0.4020151261036849, "k": 5},
                    {"type": "l1", "epsilon": 2.0, "k": 5}],
        "epochs": 1, "batch_size": 100, "seed": i,
    }


def toy_trial(config: dict[str, Any]) -> None:
    """The trivial Tune trainable of the sweep figure: train one toy model, report once."""
    from ray import tune

    from jobs.training import train

    torch.set_num_threads(1)
    trial = config["trial"]
    result = train(trial["train"], trial["out"], device="cpu", resume=False)
    tune.report({"train_loss": float(result.metrics[-1]["train_loss"])})


def _tune_wall(n: int, root: Path, *, concurrent: int) -> float:
    from ray import tune

    trials = [{"train": _toy_train_config(i), "out": str(root / f"trial-{i}")} for i in range(n)]
    tuner = tune.Tuner(
        tune.with_resources(toy_trial, {"cpu": 1}),
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=False),
        run_config=tune.RunConfig(name="bench", storage_path=str(root / "tune"), verbose=0),
    )
    previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the legacy reporter at verbose 0 prints nothing
    try:
        t0 = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - t0
    finally:
        if previous is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = previous
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} bench trials failed; first: {errors[0]}")
    return wall


def _inprocess_wall(n: int, root: Path) -> float:
    from jobs.training import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            train(_toy_train_config(i), root / f"local-{i}", device="cpu", resume=False)
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


def shard_task(checkpoint: str, suite: EvalSuite, attack: str, start: int, stop: int,
               out_dir: str) -> str:
    """One evaluation shard as a Ray task (one thread, as the sweep's evaluation workers)."""
    from jobs.evaluation import evaluate_shard

    torch.set_num_threads(1)
    return str(evaluate_shard(checkpoint, suite, attack, start, stop, out_dir, device="cpu"))


def _warm_worker(seconds: float) -> int:
    import jobs.evaluation  # noqa: F401  (import cost paid before timing)

    time.sleep(seconds)
    return os.getpid()


def _fanout_wall(task: RemoteFunction, shards: list[tuple[str, int, int]], ckpt: str,
                 suite: EvalSuite, out: Path, workers: int) -> float:
    import ray

    suite_ref = ray.put(suite)
    t0 = time.perf_counter()
    pending: list[ObjectRef] = []
    for attack, start, stop in shards:
        if len(pending) >= workers:
            _, pending = ray.wait(pending, num_returns=1)
        pending.append(task.remote(ckpt, suite_ref, attack, start, stop, str(out)))
    ray.get(pending)
    return time.perf_counter() - t0


def _fanout_figure(s: Settings, root: Path) -> Figure:
    import ray

    from jobs.run_folder import plan_shards
    from jobs.suite import load_suite
    from jobs.training import train

    cfg = {**_toy_train_config(0), "model": {"name": "mlp", "kwargs": {"hidden": FANOUT_HIDDEN}}}
    ckpt = str(train(cfg, root / "fanout-model", device="cpu", resume=False).checkpoint)
    suite = load_suite("toy")
    per = 1000 // s.eval_shards
    shards = [(a.name, start, stop) for a in suite.attacks[:2]
              for start, stop in plan_shards(per * s.eval_shards, per)]
    task = ray.remote(shard_task).options(num_cpus=1)
    ray.get([ray.remote(_warm_worker).options(num_cpus=1).remote(1.0) for _ in range(2)])
    one, two = [], []
    for r in range(s.sweep_reps):
        one.append(_fanout_wall(task, shards, ckpt, suite, root / f"fan1-{r}", 1))
        two.append(_fanout_wall(task, shards, ckpt, suite, root / f"fan2-{r}", 2))
    key = "sweep/eval_fanout_speedup"
    return ratio_figure(key, "sweep", SWEEP_TITLES[key], per_rep(one, two),
                        target=None, times={"one_worker": one, "two_workers": two},
                        details={"shards": len(shards), "points_per_shard": per, "suite": "toy",
                                 "model": f"mlp hidden {FANOUT_HIDDEN}", "ideal": 2.0})


@contextlib.contextmanager
def ray_session() -> Iterator[bool]:
    """Reuse a running Ray connection (yields False), else start a local cluster and shut it
    down afterwards (yields True)."""
    import ray

    if ray.is_initialized():
        yield False
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield True
    finally:
        ray.shutdown()


def _tune_figures(s: Settings, root: Path, common: dict[str, Any]) -> list[Figure]:
    """The Tune sweep against the same trials in one process (serial, and 2 at a time)."""
    n = s.sweep_trials
    if s.sweep_warmup:
        _tune_wall(1, root / "warm", concurrent=1)  # Tune's own first-use imports
    serial, parallel, local = [], [], []
    for r in range(s.sweep_reps):
        local.append(_inprocess_wall(n, root / f"local-{r}"))
        serial.append(_tune_wall(n, root / f"serial-{r}", concurrent=1))
        if s.sweep_parallel:
            parallel.append(_tune_wall(n, root / f"parallel-{r}", concurrent=2))
    key = "sweep/tune_vs_inprocess"
    figures = [ratio_figure(key, "sweep", SWEEP_TITLES[key], per_rep(serial, local),
                            target=None, times={"tune_serial": serial, "in_process": local},
                            details=common)]
    key = "sweep/per_trial_overhead"
    figures.append(ratio_figure(key, "sweep", SWEEP_TITLES[key],
                                [(a - b) / n for a, b in zip(serial, local, strict=True)],
                                target=None, unit="s", times={}, details=common))
    key = "sweep/tune_parallel_vs_inprocess"
    figures.append(
        ratio_figure(key, "sweep", SWEEP_TITLES[key], per_rep(parallel, local), target=None,
                     times={"tune_parallel": parallel, "in_process": local}, details=common)
        if parallel else skipped(key, "sweep", SWEEP_TITLES[key], "not measured in --quick"))
    return figures


def sweep_figures(s: Settings) -> list[Figure]:
    import ray

    with ray_session() as started:
        cpus = float(ray.cluster_resources().get("CPU", 0))
        if cpus < 2:
            return [skipped(k, "sweep", t, f"the Ray cluster has {cpus:g} CPUs; need 2")
                    for k, t in SWEEP_TITLES.items()]
        common = {"driver": "ray.tune directly (thin trainable calling jobs.training.train)",
                  "trials": s.sweep_trials, "cluster_started_here": started,
                  "cluster_cpus": cpus, "tune_warmed_up": s.sweep_warmup,
                  "trial": "toy Adv_max (linear, linf + l1, k 5), 1 epoch of 2000 points"}
        root = Path(tempfile.mkdtemp(prefix="mpo-bench-sweep-"))
        try:
            return [*_tune_figures(s, root, common), _fanout_figure(s, root)]
        finally:
            shutil.rmtree(root, ignore_errors=True)
