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

from orchestrator.bench.attack_cost import attack_figures, attack_keys
from orchestrator.bench.cli_latency import COMMANDS, cli_figures
from orchestrator.bench.execution import execution_figures, execution_keys
from orchestrator.bench.figures import STATUSES, Figure, guarded, skipped
from orchestrator.bench.gpu import projection_figures, projection_keys
from orchestrator.bench.peers import peer_figures
from orchestrator.bench.suite_cost import TITLES as SUITE_TITLES
from orchestrator.bench.suite_cost import suite_cost_figures
from orchestrator.bench.sweep_overhead import SWEEP_TITLES, sweep_figures
from orchestrator.bench.sweep_use import USE_TITLES, sweep_use_figures
from orchestrator.bench.training_cost import train_keys, training_figures
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
              command: str = "", sweep: bool = True, projection: bool = False,
              threads: int | None = 1,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every figure; returns the JSON-able report (``figures``: a list of dicts).

    ``projection``: only the groups a GPU session needs (attacks, peers, execution, the
    paper-grid projection), all on ``device``; the training and sweep groups are skipped.
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
                          sweep=sweep and not projection, projection=projection,
                          progress=progress)
    finally:
        torch.set_num_threads(previous)


def _run_bench(*, device: str, quick: bool, data_dir: str | None, command: str, sweep: bool,
               projection: bool, progress: Callable[[str], None] | None) -> dict[str, Any]:
    from jobs.training import resolve_device

    dev = resolve_device(device)
    say = progress or (lambda _msg: None)
    s = Settings.make(quick=quick, device=dev)
    t_start = time.perf_counter()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    say(f"model: MNIST CNN width {s.width}, batch {s.batch}, {s.fit_steps} clean training steps")
    b = make_bench(dev, s, data_dir)
    figures: list[Figure] = []
    say(f"1/8 attack efficiency (k = {', '.join(map(str, s.ks))}, {s.reps} repetitions)")
    figures += guarded("attack", attack_keys(s.ks), lambda: attack_figures(b))
    say("2/8 peers: torchattacks, foolbox")
    figures += peer_figures(b)
    say("3/8 execution: layout, torch.compile, bf16")
    figures += guarded("exec", execution_keys(),
                       lambda: execution_figures(b, compile_model=not quick))
    if not projection:  # the GPU script leaves these groups out
        say("4/8 training cost per strategy")
        figures += guarded("train", train_keys(), lambda: training_figures(b))
        if sweep:
            say("5/8 whole sweeps: the quickstart's wall time, utilisation (toy, 2-trial MNIST)")
            figures += guarded("sweep", list(USE_TITLES), lambda: sweep_use_figures(
                s, data_dir, mnist_ok=b.data == "mnist"))
            say(f"5/8 sweep overhead ({s.sweep_trials} toy trials on Ray Tune)")
            figures += guarded("sweep", list(SWEEP_TITLES), lambda: sweep_figures(s))
        else:
            figures += [skipped(k, "sweep", k, "sweep figures not requested")
                        for k in (*USE_TITLES, *SWEEP_TITLES)]
    if projection or dev.type == "cuda":
        say(f"6/8 training throughput of the paper's recipes on {dev}, paper-grid projection")
        figures += guarded("projection", projection_keys(), lambda: projection_figures(
            dev, steps=s.proj_steps, warmup=s.proj_warmup, batch_size=s.proj_batch))
    else:
        say("6/8 projection: skipped (no GPU; --projection measures it on this device)")
        reason = ("no GPU: the projection needs the device's rates (mpo bench --projection "
                  "measures it on this device)")
        figures += [skipped(k, "projection", k, reason) for k in projection_keys()]
    if not projection:
        say("7/8 what each shipped suite costs per 100 points of a robust model")
        figures += guarded("suite", list(SUITE_TITLES), lambda: suite_cost_figures(
            s, data_dir, mnist_ok=b.data == "mnist"))
        say("8/8 command-line latency (mpo grids, status, refused mistakes)")
        figures += guarded("cli", list(COMMANDS), lambda: cli_figures(3 if quick else 7))
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "device": str(dev),
        "quick": quick,
        "projection": projection,
        "seconds": time.perf_counter() - t_start,
        "machine": {**machine_info(dev), "load_average_start": load_start},
        "versions": versions(),
        "settings": {**asdict(s), "data": b.data, "model_clean_acc": b.clean_acc},
        "summary": {st: sum(f.status == st for f in figures) for st in STATUSES},
        "figures": [f.to_dict() for f in figures],
    }
