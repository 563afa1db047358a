"""Group 3, ``train``: the seconds per training step of ``jobs.training.train`` for each strategy
against its ideal, and each strategy's step against Adv_inf's.

The ideal of a step is the sum of the passes it must run, each at the cost of a lone pass of
the same model and batch: the passes are counted as they ran (``jobs.train_cost.PassCounter``,
the run's ``metrics.jsonl``): per clean input, ``attack_bwd`` input-gradient passes (eval mode,
forward+backward), ``attack_fwd - attack_bwd`` forward-only passes (the scoring of a last
iterate, MSD's candidates) and ``update_fwd`` updates (train mode: forward, backward with the
weight gradients, the optimiser step). The unit costs are measured in the same process right
before and after each strategy's run, on a model like the run's (at its start, and the one it
ended with) and a perturbed batch. 1.0 means a step costs exactly its passes: no extra pass, no
time outside the model beyond the passes'.
"""

from __future__ import annotations

import copy
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from jobs.strategy_table import SINGLE_LABELS, STRATEGY_TABLE, strategy
from orchestrator.bench.attack_cost import reference_passes
from orchestrator.bench.figures import Figure, Target, interleaved, ratio_figure, skipped, sync
from orchestrator.bench.workload import Bench, Settings

if TYPE_CHECKING:
    from jobs.config import TrainConfig

#: the strategies timed (every row of the strategy table), with their row label: the single
#: attack timed is l_inf PGD
STRATEGY_TITLES = {row.name: "Adv_inf (single)" if row.name == "single" else row.label
                   for row in STRATEGY_TABLE}
#: each strategy's step against Adv_inf's: the targets of the one-attack-per-batch strategies
VS_SINGLE_TARGETS = {"eat": Target("<=", 1.15), "random": Target("<=", 1.15)}
IDEAL_TARGET = Target("<=", 1.05)


def train_keys(prefix: str = "") -> list[str]:
    keys = [f"{prefix}train/{name}" for name in STRATEGY_TITLES]
    return keys + [f"{prefix}train/{name}_vs_single" for name in STRATEGY_TITLES
                   if name not in ("nat", "single")]


def train_configs(s: Settings) -> dict[str, dict[str, Any]]:
    """One MNIST training config per strategy, sized by ``s`` (the paper's MNIST training
    attacks at ``s.train_k`` steps; MSD runs over the same three balls)."""
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
    multi = [linf, l1, l2]
    return {
        row.name: {**base, "label": SINGLE_LABELS["linf"] if row.name == "single" else row.label,
                   "strategy": row.name,
                   "attacks": [] if row.name == "nat" else [linf] if row.name == "single" else multi}
        for row in STRATEGY_TABLE
    }


def training_passes(config: TrainConfig) -> float:
    """Forward+backward passes per step and clean input, from the config: the strategy table's
    count (``StrategyRow.passes_per_step``) of its attacks' steps. The GPU-hour projection uses
    it; the training figures count what really ran instead."""
    from jobs.attacks import make_attack

    bounds = config.dataset_info().bounds
    steps = [make_attack(spec, bounds=bounds).total_steps for spec in config.attacks]
    return strategy(config.strategy).passes_per_step(steps)


def unit_costs(b: Bench, trained: nn.Module, reps: int, wide: int) -> dict[str, list[float]]:
    """Seconds of one pass of ``trained`` (the model a strategy's run ended with: a pass's time
    can depend on the weights, e.g. through denormal numbers), ``reps`` times each,
    interleaved: ``attack`` (input gradient, eval mode), ``forward`` (no gradient, eval mode),
    ``update`` (train mode: forward, backward, Adam step, on a copy), on the bench's batch
    (perturbed) and, for ``forward_wide`` and ``update_wide``, on ``wide`` copies of it at once
    (MSD scores its candidates and ``avg`` trains on its attacks' batches that way)."""
    from jobs.attacks import make_attack

    model = copy.deepcopy(trained).eval()
    learner = copy.deepcopy(trained).train()
    x = make_attack({"type": "linf", "epsilon": 0.3, "k": 2})(model, b.x, b.y).x_adv
    xw, yw = x.repeat(wide, 1, 1, 1), b.y.repeat(wide)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)

    def forward(inputs: torch.Tensor) -> None:
        with torch.no_grad():
            model(inputs)

    def update(inputs: torch.Tensor, labels: torch.Tensor) -> None:
        loss = F.cross_entropy(learner(inputs), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return interleaved({"attack": lambda: reference_passes(model, x, b.y, 1),
                        "forward": lambda: forward(x), "forward_wide": lambda: forward(xw),
                        "update": lambda: update(x, b.y), "update_wide": lambda: update(xw, yw)},
                       reps=reps, warmup=2, device=b.device)


def ideal_seconds(m: dict[str, Any], units: dict[str, float], *, strategy: str, wide: int) -> float:
    """A step's ideal seconds from its passes per clean input (a metrics record): each pass at
    the cost of a lone pass of the batch size it runs at (MSD's candidate forwards and ``avg``'s
    update at ``wide`` x B, the others at B)."""
    grads = m["attack_bwd_per_example"]
    forwards = m["attack_fwd_per_example"] - grads
    forward = units["forward_wide"] / wide if strategy == "msd" else units["forward"]
    update = units["update_wide"] / wide if strategy == "avg" else units["update"]
    return grads * units["attack"] + forwards * forward + m["update_fwd_per_example"] * update


def training_figures(b: Bench, prefix: str = "") -> list[Figure]:
    from jobs.config import make_train_config
    from jobs.training import load_trained, train

    s = b.settings
    group = "train"
    if not b.data.startswith("mnist"):
        return [skipped(key, group, key, f"needs MNIST: {b.data}") for key in train_keys(prefix)]
    configs = {name: make_train_config(c) for name, c in train_configs(s).items()}
    root = Path(tempfile.mkdtemp(prefix="mpo-bench-train-"))
    counter = iter(range(10**6))

    def run(name: str) -> tuple[float, dict[str, Any], nn.Module]:
        out = root / f"{name}-{next(counter)}"
        result = train(configs[name], out, data_dir=b.data_dir, device=b.device, resume=False)
        model, _, _ = load_trained(result.checkpoint, device=b.device)
        shutil.rmtree(out, ignore_errors=True)
        m = result.metrics[-1]
        return m["seconds"] / configs[name].steps_per_epoch, m, model

    def initial(name: str) -> nn.Module:
        from jobs.models import build_model

        torch.manual_seed(configs[name].seed)
        model = build_model(configs[name].model.name, configs[name].dataset_info(),
                            **configs[name].model.kwargs)
        return model.to(b.device)

    per_step: dict[str, list[float]] = {name: [] for name in configs}
    ideal: dict[str, list[float]] = {name: [] for name in configs}
    counts: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    units: dict[str, list[float]] = {}
    wide = len(configs["max"].attacks)
    t0 = time.perf_counter()
    try:
        run("nat")  # warm-up: data loading paths, allocator
        for _ in range(s.train_reps):
            for name in configs:
                # the unit costs on each run's model right before and after it (the model at
                # its start and at its end), so that both sides see the same machine state
                before = unit_costs(b, initial(name), 3, wide)
                seconds, m, model = run(name)
                sync(b.device)
                after = unit_costs(b, model, 3, wide)
                u = {k: statistics.median(before[k] + after[k]) for k in before}
                for k, v in u.items():
                    units.setdefault(k, []).append(v)
                per_step[name].append(seconds)
                ideal[name].append(ideal_seconds(m, u, strategy=name, wide=wide))
                counts[name].append({k: m[f"{k}_per_example"] for k in
                                     ("attack_fwd", "attack_bwd", "update_fwd", "update_bwd")})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures = _figures(configs, per_step, ideal, counts,
                       {k: statistics.median(v) for k, v in units.items()}, s.batch, prefix)
    figures[0].details["seconds_total"] = time.perf_counter() - t0
    return figures


def _figures(configs: dict[str, TrainConfig], per_step: dict[str, list[float]],
             ideal: dict[str, list[float]], counts: dict[str, list[dict[str, float]]],
             unit_medians: dict[str, float], batch: int, prefix: str) -> list[Figure]:
    """Each strategy's step against its counted passes, and against Adv_inf's step."""
    group = "train"
    figures = []
    for name, title in STRATEGY_TITLES.items():
        ratios = [t / i for t, i in zip(per_step[name], ideal[name], strict=True)]
        passes = {k: statistics.mean(c[k] for c in counts[name]) for k in counts[name][0]}
        details = {"passes_per_example": passes, "unit_seconds": unit_medians,
                   "attacks": configs[name].attacks, "steps": configs[name].steps_per_epoch,
                   "batch": batch, "ideal_seconds": statistics.median(ideal[name])}
        figures.append(ratio_figure(
            f"{prefix}train/{name}", group,
            f"{title} step / its passes ({passes['attack_bwd']:.3g} grad + "
            f"{passes['attack_fwd'] - passes['attack_bwd']:.3g} fwd + {passes['update_fwd']:.3g} update)",
            ratios, target=IDEAL_TARGET, times={"step": per_step[name], "ideal": ideal[name]},
            details=details,
        ))
    for name, title in STRATEGY_TITLES.items():
        if name in ("nat", "single"):
            continue
        ratios = [t / r for t, r in zip(per_step[name], per_step["single"], strict=True)]
        ideal_ratio = statistics.median(
            i / r for i, r in zip(ideal[name], ideal["single"], strict=True))
        figures.append(ratio_figure(
            f"{prefix}train/{name}_vs_single", group, f"{title} step / Adv_inf step", ratios,
            target=VS_SINGLE_TARGETS.get(name),
            times={"step": per_step[name], "single_step": per_step["single"]},
            details={"ideal_ratio": ideal_ratio,
                     "note": "ideal_ratio: the same ratio of the steps' ideals (their passes)"},
        ))
    return figures
