"""What a sweep needs before Ray runs anything, and the checks that refuse it at once.

- compute: what one trial reserves (``Resources``: a training bundle and one bundle per
  evaluation worker, defaults filled by ``make_resources``), checked against the cluster it
  joined (``check_resources``, with the cluster described by ``Cluster``);
- data: every dataset of the plan under the data root (``preflight_data``), and the absolute
  root the trials use (``trial_data_dir``);
- threads: torch's thread counts, set from the CPUs a process was given (``torch_threads``,
  ``set_torch_threads``; ``available_cpus`` for the plain CLI commands).

No Ray: ``mpo sweep --dry-run`` uses this module without starting or importing Ray.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobs.errors import MpoError

if TYPE_CHECKING:
    from orchestrator.plan import SweepPlan


#: Default GPU fraction of one evaluation worker when trials use GPUs.
EVAL_GPU_SHARE = 0.5
#: Default CPUs of each of the two bundles of a CPU-only trial with one evaluation worker.
CPU_SHARE = 0.5


@dataclass(frozen=True)
class Resources:
    """What one trial reserves: bundle 0 for training, ``eval_workers`` bundles for its shards."""

    gpus_per_trial: float
    cpus_per_trial: float = 1.0
    eval_workers: int = 1
    eval_cpus: float = 1.0
    eval_gpus: float = 0.0

    def bundles(self) -> list[dict[str, float]]:
        head = {"CPU": self.cpus_per_trial}
        if self.gpus_per_trial:
            head["GPU"] = self.gpus_per_trial
        worker = {"CPU": self.eval_cpus}
        if self.eval_gpus:
            worker["GPU"] = self.eval_gpus
        return [head] + [dict(worker) for _ in range(self.eval_workers)]

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for bundle in self.bundles():
            for key, value in bundle.items():
                out[key] = out.get(key, 0.0) + value
        return out


def make_resources(*, gpus_per_trial: float | None, cpus_per_trial: float | None,
                   eval_workers: int, eval_cpus: float | None, eval_gpus: float | None,
                   cluster_gpus: float) -> Resources:
    """Fill the defaults: 1 GPU per trial where the cluster has GPUs, else 0; then half a GPU
    per evaluation worker (two evaluation tasks share a GPU; the training bundle keeps whole
    GPUs so that two trials never train on one). CPUs: 1 per bundle, except for a CPU-only
    trial with one evaluation worker and neither CPU count given: a trial trains or evaluates,
    never both, each on one torch thread, so its two bundles share one CPU (half each) and a
    2-core machine runs two trials at once instead of leaving a core idle."""
    if gpus_per_trial is None:
        gpus_per_trial = 1.0 if cluster_gpus > 0 else 0.0
    if eval_gpus is None:
        eval_gpus = EVAL_GPU_SHARE if eval_workers and gpus_per_trial else 0.0
    shared = (cpus_per_trial is None and eval_cpus is None and eval_workers == 1
              and not gpus_per_trial and not eval_gpus)
    if cpus_per_trial is None:
        cpus_per_trial = CPU_SHARE if shared else 1.0
    if eval_cpus is None:
        eval_cpus = CPU_SHARE if shared else 1.0
    for name, value in (("--gpus-per-trial", gpus_per_trial), ("--cpus-per-trial", cpus_per_trial),
                        ("--cpus-per-eval-worker", eval_cpus), ("--gpus-per-eval-worker", eval_gpus)):
        if value < 0 or not math.isfinite(value):
            raise MpoError(f"{name} {value}: must be a number >= 0")
    if cpus_per_trial <= 0:
        raise MpoError(f"--cpus-per-trial {cpus_per_trial}: must be > 0")
    if eval_workers < 0:
        raise MpoError(f"--eval-workers {eval_workers}: must be >= 0 (0: evaluate in the trial)")
    if eval_workers and eval_cpus <= 0 and eval_gpus <= 0:
        raise MpoError("an evaluation worker needs some CPU or GPU (--cpus-per-eval-worker)")
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise MpoError(f"--gpus-per-trial {gpus_per_trial}: above 1, a whole number of GPUs")
    return Resources(gpus_per_trial, cpus_per_trial, eval_workers, eval_cpus, eval_gpus)


# ----------------------------------------------------------------------------------------------
# The cluster


@dataclass
class Cluster:
    """The Ray cluster a sweep runs on, as ``orchestrator.tune_driver.connect`` found it."""

    started_here: bool
    address: str
    dashboard_url: str | None
    resources: dict[str, float]
    max_resources: dict[str, float] | None  # from an autoscaler config, when there is one
    largest_node: dict[str, float]

    def gpus(self) -> float:
        """GPUs the cluster has now, or can start (an autoscaler's GPU workers)."""
        return max(self.resources.get("GPU", 0.0), (self.max_resources or {}).get("GPU", 0.0))


def _check_fits(need: dict[str, float], limits: dict[str, float],
                refusal: Callable[[str, float], str]) -> None:
    """``MpoError(refusal(key, limit))`` for the first resource of ``need`` above ``limits``
    (with a rounding margin of 1e-9)."""
    for key, value in need.items():
        if value > limits.get(key, 0.0) + 1e-9:
            raise MpoError(refusal(key, limits.get(key, 0.0)))


def check_resources(res: Resources, cluster: Cluster) -> None:
    """Refuse at once what would leave trials pending forever."""
    need = res.totals()
    if need.get("GPU", 0.0) > 0 and cluster.gpus() <= 0:
        raise MpoError(
            f"a trial asks for {need['GPU']:g} GPU (--gpus-per-trial {res.gpus_per_trial:g}, "
            f"{res.eval_workers} evaluation workers x {res.eval_gpus:g}) but the Ray cluster at "
            f"{cluster.address} has no GPUs (resources: CPU {cluster.resources.get('CPU', 0):g}). "
            "Run with --gpus-per-trial 0 on this cluster, or connect to one with GPUs (--address)."
        )
    for bundle in res.bundles():
        _check_fits(bundle, cluster.max_resources or cluster.largest_node,
                    lambda key, have, bundle=bundle: (
                        f"a trial needs a bundle {bundle} but the largest node of the cluster at "
                        f"{cluster.address} has {key} {have:g}; lower "
                        "--cpus-per-trial / --gpus-per-trial / --cpus-per-eval-worker"))
    _check_fits(need, cluster.max_resources or cluster.resources, lambda key, have: (
        f"one trial reserves {key} {need[key]:g} ({res.bundles()}) but the cluster at "
        f"{cluster.address} has {key} {have:g} in all; lower "
        "--eval-workers or the per-trial resources"))


# ----------------------------------------------------------------------------------------------
# Data


def trial_data_dir(data_dir: str | None) -> str:
    """The absolute data root the trials use (they run in other working folders)."""
    from jobs.data import resolve_data_dir

    return str(resolve_data_dir(data_dir).resolve())


def preflight_data(plan: SweepPlan, data_dir: str | None, *, download: bool) -> None:
    """Refuse, before Ray starts, a sweep whose datasets are not under the data root (unless the
    trials may download them): the ``DataError`` names the root, the files and the fix."""
    from jobs.data import require_dataset

    if download:
        return
    for dataset, ev in plan.grid.evaluation.items():
        if dataset not in plan.suites:
            continue
        n_train = [t.config["dataset"].get("n_train") for t in plan.trials.values()
                   if t.dataset == dataset]
        require_dataset(dataset, data_dir, n_test=ev.n_test,
                        n_train=max((n for n in n_train if n is not None), default=None))


# ----------------------------------------------------------------------------------------------
# Threads


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's limit,
    not the machine's core count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def torch_threads(cpus: float) -> int:
    """Torch threads for ``cpus`` reserved CPUs: the whole CPUs, at least one (a fractional
    share such as a 0.5-CPU bundle runs one thread: more would oversubscribe the core it
    shares)."""
    return max(1, math.floor(cpus + 1e-9))


def set_torch_threads(threads: int) -> dict[str, int]:
    """Set torch's intra-op threads and, where torch still allows it, its inter-op threads;
    returns both as they now are. Left to itself torch starts one thread per core of the
    machine in every process, so two trials on a 2-core node would each run two."""
    import torch

    torch.set_num_threads(threads)
    # Allowed once per process, before any inter-op work: a Ray worker reused for another task
    # keeps its first setting.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
