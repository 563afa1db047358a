"""Group 3, ``train``: the seconds per training step of ``jobs.training.train`` for each
strategy / the ideal: (attack passes + training passes) x a ``nat`` step."""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.bench.figures import Figure, Target, ratio_figure, skipped
from orchestrator.bench.workload import Bench, Settings

if TYPE_CHECKING:
    from jobs.config import TrainConfig

TRAIN_KEYS = [f"train/{name}" for name in ("nat_step", "single", "avg", "max")]


def train_configs(s: Settings) -> dict[str, dict[str, Any]]:
    """One MNIST training config per strategy, sized by ``s`` (nat runs 4x as many steps)."""
    k = s.train_k
    linf = {"type": "linf", "epsilon": 0.3, "k": k, "a": 0.01}
    l1 = {"type": "l1", "epsilon": 10.0, "k": k, "a": 1.0, "perc": 99}
    l2 = {"type": "l2", "epsilon": 2.0, "k": k, "a": 0.1}
    base = {
        "dataset": {"name": "mnist", "n_train": s.batch * s.train_steps * 4},
        "model": {"name": "mnist_cnn", "kwargs": {"width": s.width}},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "start_small": False, "epochs": 1, "steps_per_epoch": s.train_steps,
        "batch_size": s.batch, "seed": 0,
    }
    return {
        "nat": {**base, "label": "Nat", "strategy": "nat", "steps_per_epoch": s.train_steps * 4},
        "single": {**base, "label": "Adv_inf", "strategy": "single", "attacks": [linf]},
        "avg": {**base, "label": "Adv_avg", "strategy": "avg", "attacks": [linf, l1, l2]},
        "max": {**base, "label": "Adv_max", "strategy": "max", "attacks": [linf, l1, l2]},
    }


def training_passes(config: TrainConfig) -> int:
    """Ideal forward+backward passes per step and clean input: every attack's steps, plus the
    training pass (K passes for ``avg``, which trains on K x B inputs)."""
    from jobs.attacks import make_attack

    bounds = config.dataset_info().bounds
    attacks = [make_attack(spec, bounds=bounds) for spec in config.attacks]
    train = len(attacks) if config.strategy == "avg" else 1
    return sum(a.total_steps for a in attacks) + train


def training_figures(b: Bench, prefix: str = "") -> list[Figure]:
    from jobs.config import make_train_config
    from jobs.training import train

    s = b.settings
    group, target = "train", Target("<=", 1.15)
    titles = {"single": "Adv_inf (single)", "avg": "Adv_avg", "max": "Adv_max"}
    if not b.data.startswith("mnist"):
        return [skipped(f"{prefix}train/{n}", group, t, f"needs MNIST: {b.data}", target)
                for n, t in titles.items()]
    configs = {name: make_train_config(c) for name, c in train_configs(s).items()}
    root = Path(tempfile.mkdtemp(prefix="mpo-bench-train-"))
    counter = iter(range(10**6))

    def step_seconds(name: str) -> float:
        out = root / f"{name}-{next(counter)}"
        result = train(configs[name], out, data_dir=b.data_dir, device=b.device, resume=False)
        shutil.rmtree(out, ignore_errors=True)
        m = result.metrics[-1]
        return m["seconds"] / configs[name].steps_per_epoch

    per_step: dict[str, list[float]] = {name: [] for name in configs}
    try:
        step_seconds("nat")  # warm-up: data loading paths, allocator
        for _ in range(s.train_reps):
            for name in configs:
                per_step[name].append(step_seconds(name))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    nat = per_step["nat"]
    figures = [ratio_figure(f"{prefix}train/nat_step", group, "Nat: seconds per training step",
                            nat, target=None, times={"nat_step": nat}, unit="s",
                            details={"batch": s.batch, "width": s.width})]
    for name, title in titles.items():
        passes = training_passes(configs[name])
        ratios = [t / (passes * n) for t, n in zip(per_step[name], nat, strict=True)]
        details = {"ideal_passes": passes, "attacks": configs[name].attacks,
                   "steps": configs[name].steps_per_epoch, "batch": s.batch}
        if name == "avg":
            k = len(configs[name].attacks)
            details["ratio_vs_sum_plus_1"] = statistics.median(
                t / ((passes - k + 1) * n) for t, n in zip(per_step[name], nat, strict=True))
            details["note"] = "ideal counts K training passes: avg trains on K x B inputs"
        figures.append(ratio_figure(
            f"{prefix}train/{name}", group, f"{title} step / ({passes} x nat step)", ratios,
            target=target, times={"step": per_step[name], "nat_step": nat}, details=details,
        ))
    return figures
