"""Group 5, ``projection``: training examples/s of the paper's MNIST and CIFAR10 Adv_max recipes
(the MNIST CNN and the WRN-32-10, at the recipes' batch sizes and attacks) on one device, and
the GPU hours of ``paper-grid`` projected from them.

On a GPU this is the figure the grid's cost needs; ``mpo bench --projection`` runs it with the
attack, peer and execution groups on the device, the script to run the day a GPU is lent.
``--device cpu --projection --quick`` runs the same code on the CPU with a tiny batch (the
projection then uses CPU rates).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from orchestrator.bench.figures import INFO, Figure, failed, sync
from orchestrator.bench.training_cost import training_passes

#: (dataset, recipe, figure name, title) of each throughput the projection uses
THROUGHPUTS = (("mnist", "mnist-paper", "mnist_adv_max_examples_per_s",
                "MNIST CNN Adv_max training examples/s (mnist-paper)"),
               ("cifar10", "cifar10-paper", "cifar10_wrn_adv_max_examples_per_s",
                "CIFAR10 WRN-32-10 Adv_max training examples/s (cifar10-paper)"))
PROJECTION = ("paper_grid_hours", "paper-grid projected device hours")
#: the execution variants each throughput is measured in: name -> (layout, precision)
VARIANTS = {"fp32": ("channels_last", "fp32"), "contiguous": ("contiguous", "fp32"),
            "bf16": ("channels_last", "bf16")}


def projection_keys(prefix: str = "") -> list[str]:
    return [f"{prefix}projection/{name}" for _, _, name, _ in THROUGHPUTS] + [
        f"{prefix}projection/{PROJECTION[0]}"]


def adv_max_throughput(recipe: str, device: torch.device, *, steps: int, warmup: int = 2,
                       batch_size: int | None = None, layout: str = "channels_last",
                       precision: str = "fp32") -> dict[str, Any]:
    """Examples/s of one training recipe's steps (``jobs.strategies`` + Adam/SGD step) on
    synthetic batches of the dataset's shape; the throughput does not depend on the pixels."""
    from jobs.config import RECIPES
    from jobs.models import build_model, set_execution
    from jobs.strategies import get_strategy
    from jobs.training import build_optimizer, training_attacks

    config = RECIPES[recipe]
    info = config.dataset_info()
    bs = batch_size or config.batch_size
    torch.manual_seed(0)
    model = build_model(config.model.name, info, layout=layout, **config.model.kwargs).to(device)
    set_execution(model, precision=precision)
    opt = build_optimizer(config, model)
    attacks = training_attacks(config)
    strategy = get_strategy(config.strategy)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand((bs, *info.input_shape), generator=gen, device=device)
    y = torch.randint(0, info.num_classes, (bs,), generator=gen, device=device)

    def step() -> None:
        model.train()
        out = strategy(model, x, y, attacks, generator=gen)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - t0
    return {"recipe": recipe, "examples_per_s": steps * bs / seconds, "batch": bs, "steps": steps,
            "passes_per_example": training_passes(config), "seconds": seconds, "layout": layout,
            "precision": precision}


def project_paper_grid(rates: dict[str, float], grid: str = "paper-grid") -> dict[str, Any]:
    """Device hours of ``grid`` from measured forward+backward passes per second and example.

    ``rates``: dataset -> examples/s x passes per example of its Adv_max measurement (passes/s).
    Training: epochs x steps x batch x passes (``training_passes``). Evaluation: every shard's
    points x the attack's ``total_steps`` (counted as full passes: an upper bound for
    forward-only RT scoring).
    """
    from jobs.attacks import make_attack
    from jobs.config import make_train_config
    from jobs.training import total_steps
    from orchestrator.plan import load_plan

    plan, _, _ = load_plan(grid)
    hours: dict[str, float] = {}
    train_h = eval_h = 0.0
    missing: set[str] = set()
    for mid, trial in plan.trials.items():
        if trial.strategy in ("soup", "external"):  # evaluation only: nothing to train
            continue
        config = make_train_config(trial.config)
        rate = rates.get(trial.dataset)
        if rate is None:
            missing.add(trial.dataset)
            continue
        n = config.dataset.n_train or config.dataset_info().train_size or 0
        steps = math.ceil(n / config.batch_size)
        if config.steps_per_epoch is not None:
            steps = min(steps, config.steps_per_epoch)
        examples = total_steps(config.epochs, steps) * config.batch_size
        h = examples * training_passes(config) / rate / 3600
        hours[mid] = h
        train_h += h
    for shard in plan.shards:
        dataset = plan.trials[shard.model_id].dataset
        rate = rates.get(dataset)
        if rate is None:
            continue
        spec = plan.suites[dataset].attack(shard.attack).spec
        passes = make_attack(spec, bounds=(0.0, 1.0)).total_steps
        eval_h += (shard.stop - shard.start) * passes / rate / 3600
    return {"grid": grid, "models": len(plan.trials), "train_hours": train_h,
            "eval_hours": eval_h, "total_hours": train_h + eval_h,
            "per_trial_train_hours": hours, "datasets_without_rate": sorted(missing)}


def projection_figures(device: torch.device, *, steps: int, warmup: int,
                       batch_size: int | None = None, prefix: str = "") -> list[Figure]:
    """Each recipe's throughput in every ``VARIANTS`` execution (the value: the default, fp32
    channels-last, what ``jobs.training`` runs), and the paper-grid projection from the default
    rates (the bf16 projection in its details)."""
    figures: list[Figure] = []
    rates: dict[str, dict[str, float]] = {v: {} for v in VARIANTS}
    for dataset, recipe, name, title in THROUGHPUTS:
        key = f"{prefix}projection/{name}"
        try:
            runs = {v: adv_max_throughput(recipe, device, steps=steps, warmup=warmup,
                                          batch_size=batch_size, layout=layout, precision=precision)
                    for v, (layout, precision) in VARIANTS.items()}
        except Exception as err:
            figures.append(failed(key, "projection", title, err))
            continue
        for v, r in runs.items():
            rates[v][dataset] = r["examples_per_s"] * r["passes_per_example"]
        base = runs["fp32"]["examples_per_s"]
        figures.append(Figure(
            key=key, group="projection", title=f"{title} on {device.type}", status=INFO,
            value=base, unit="ex/s", details={
                "device": str(device), **runs,
                "speedup": {v: r["examples_per_s"] / base for v, r in runs.items()}}))
    key, title = f"{prefix}projection/{PROJECTION[0]}", PROJECTION[1]
    try:
        proj = project_paper_grid(rates["fp32"])
        proj_bf16 = project_paper_grid(rates["bf16"])
    except Exception as err:
        figures.append(failed(key, "projection", title, err))
    else:
        figures.append(Figure(key=key, group="projection", title=f"{title} ({device.type} rates)",
                              status=INFO, value=proj["total_hours"], unit="h",
                              details={**proj, "device": str(device),
                                       "bf16_total_hours": proj_bf16["total_hours"]}))
    return figures
