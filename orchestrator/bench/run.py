"""The whole bench: every group in turn, the machine and library versions, one JSON-able report."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from orchestrator.bench.attack_cost import ATTACK_KEYS, attack_figures
from orchestrator.bench.figures import STATUSES, Figure, guarded, skipped
from orchestrator.bench.gpu import gpu_figures
from orchestrator.bench.peers import peer_figures
from orchestrator.bench.sweep_overhead import SWEEP_TITLES, sweep_figures
from orchestrator.bench.training_cost import TRAIN_KEYS, training_figures
from orchestrator.bench.workload import Settings, make_bench

SCHEMA = "mpo-bench/1"


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024**2, 2)
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "memory_gib": mem, "platform": platform.platform(), "hostname": platform.node(),
        "cuda_available": torch.cuda.is_available(),
    }
    with contextlib.suppress(OSError):
        info["load_average"] = list(os.getloadavg())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        total = torch.cuda.get_device_properties(0).total_memory
        info["gpu_memory_gib"] = round(total / 1024**3, 2)
    return info


def versions() -> dict[str, str | None]:
    from jobs import __version__
    from jobs.io import versions as package_versions

    return {"mpo": __version__,
            **package_versions(("torch", "ray", "foolbox", "torchattacks", "numpy")),
            "cuda": torch.version.cuda}


def run_bench(*, device: str = "auto", quick: bool = False, data_dir: str | None = None,
              command: str = "", sweep: bool = True, threads: int | None = 1,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every figure; returns the JSON-able report (``figures``: a list of dicts).

    ``threads``: torch CPU threads while measuring (None: torch's default). One thread is the
    default because on a shared or small machine multi-threaded timings swing by several times
    (threads wait for each other when one is descheduled), which ratios cannot cancel.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads = {threads}: must be >= 1 (or None for torch's default)")
        torch.set_num_threads(threads)
    try:
        return _run_bench(device=device, quick=quick, data_dir=data_dir, command=command,
                          sweep=sweep, progress=progress)
    finally:
        torch.set_num_threads(previous)


def _run_bench(*, device: str, quick: bool, data_dir: str | None, command: str, sweep: bool,
               progress: Callable[[str], None] | None) -> dict[str, Any]:
    from jobs.training import resolve_device

    dev = resolve_device(device)
    say = progress or (lambda _msg: None)
    s = Settings.make(quick=quick, device=dev)
    t_start = time.perf_counter()
    say(f"model: MNIST CNN width {s.width}, batch {s.batch}, {s.fit_steps} clean training steps")
    b = make_bench(dev, s, data_dir)
    figures: list[Figure] = []
    say(f"1/5 attack efficiency (k = {s.k}, {s.reps} repetitions)")
    figures += guarded("attack", ATTACK_KEYS, lambda: attack_figures(b))
    say("2/5 peers: torchattacks, foolbox")
    figures += peer_figures(b)
    say("3/5 training cost per strategy")
    figures += guarded("train", TRAIN_KEYS, lambda: training_figures(b))
    if sweep:
        say(f"4/5 sweep overhead ({s.sweep_trials} toy trials on Ray Tune)")
        figures += guarded("sweep", list(SWEEP_TITLES), lambda: sweep_figures(s))
    else:
        figures += [skipped(k, "sweep", k, "sweep figures not requested") for k in SWEEP_TITLES]
    gpu = torch.device("cuda") if torch.cuda.is_available() else None
    say("5/5 GPU" + ("" if gpu else ": skipped (no GPU)"))
    figures += guarded("gpu", ["gpu/all"], lambda: gpu_figures(gpu, quick, data_dir, dev))
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "device": str(dev),
        "quick": quick,
        "seconds": time.perf_counter() - t_start,
        "machine": machine_info(dev),
        "versions": versions(),
        "settings": {**asdict(s), "data": b.data, "model_clean_acc": b.clean_acc},
        "summary": {st: sum(f.status == st for f in figures) for st in STATUSES},
        "figures": [f.to_dict() for f in figures],
    }
