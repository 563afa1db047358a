"""Group 5, ``gpu``: with CUDA, groups 1-3 on the GPU, training examples/s of the MNIST and
CIFAR10 Adv_max recipes, and the GPU hours ``paper-grid`` projects from them."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from orchestrator.bench.attack_cost import attack_figures
from orchestrator.bench.figures import INFO, Figure, failed, skipped, sync
from orchestrator.bench.peers import peer_figures
from orchestrator.bench.training_cost import training_figures, training_passes
from orchestrator.bench.workload import Settings, make_bench

TITLES = {"gpu/mnist_adv_max_examples_per_s": "MNIST Adv_max training examples/s",
          "gpu/cifar10_wrn_adv_max_examples_per_s": "CIFAR10 WRN Adv_max training examples/s",
          "gpu/paper_grid_gpu_hours": "paper-grid projected GPU hours"}
#: (dataset, recipe, figure key) of each throughput the projection uses
THROUGHPUTS = (("mnist", "mnist-paper", "gpu/mnist_adv_max_examples_per_s"),
               ("cifar10", "cifar10-paper", "gpu/cifar10_wrn_adv_max_examples_per_s"))


def adv_max_throughput(recipe: str, device: torch.device, *, steps: int, warmup: int = 2,
                       batch_size: int | None = None,
                       channels_last: bool = False) -> dict[str, Any]:
    """Examples/s of one training recipe's steps (``jobs.strategies`` + Adam/SGD step) on
    synthetic batches of the dataset's shape; the throughput does not depend on the pixels."""
    from jobs.config import RECIPES
    from jobs.models import build_model
    from jobs.strategies import get_strategy
    from jobs.training import build_optimizer, training_attacks

    config = RECIPES[recipe]
    info = config.dataset_info()
    bs = batch_size or config.batch_size
    torch.manual_seed(0)
    model = build_model(config.model.name, info, **config.model.kwargs).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(config, model)
    attacks = training_attacks(config)
    strategy = get_strategy(config.strategy)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand((bs, *info.input_shape), generator=gen, device=device)
    y = torch.randint(0, info.num_classes, (bs,), generator=gen, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

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
    passes = training_passes(config)
    return {"recipe": recipe, "examples_per_s": steps * bs / seconds, "batch": bs, "steps": steps,
            "passes_per_example": passes, "seconds": seconds, "channels_last": channels_last}


def _gradient_agreement(recipe: str, device: torch.device) -> dict[str, float]:
    """Input gradients of one batch with and without channels-last: cosine and sign agreement
    (channels-last changes the kernels, hence float rounding; results must stay within
    tolerance)."""
    from jobs.attacks.base import input_grad
    from jobs.config import RECIPES
    from jobs.models import build_model

    config = RECIPES[recipe]
    info = config.dataset_info()
    torch.manual_seed(0)
    model = build_model(config.model.name, info, **config.model.kwargs).to(device).eval()
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.rand((64, *info.input_shape), generator=gen, device=device)
    y = torch.randint(0, info.num_classes, (64,), generator=gen, device=device)
    g0, _ = input_grad(model, x, y)
    model_cl = model.to(memory_format=torch.channels_last)
    g1, _ = input_grad(model_cl, x.contiguous(memory_format=torch.channels_last), y)
    cos = F.cosine_similarity(g0.flatten(1), g1.flatten(1), dim=1).min()
    agree = (g0.sign() == g1.sign()).float().mean()
    return {"min_cosine": float(cos), "sign_agreement": float(agree)}


def project_paper_grid(rates: dict[str, float], grid: str = "paper-grid") -> dict[str, Any]:
    """GPU hours of ``grid`` from measured seconds per (forward+backward pass x example).

    ``rates``: dataset -> examples/s x passes per example of its Adv_max measurement (passes/s).
    Training: epochs x steps x batch x passes. Evaluation: every shard's points x the attack's
    ``total_steps`` (counted as full passes: an upper bound for forward-only RT scoring).
    """
    from jobs.attacks import make_attack
    from jobs.config import make_train_config
    from orchestrator.grid import load_plan

    plan, _, _ = load_plan(grid)
    hours: dict[str, float] = {}
    train_h = eval_h = 0.0
    missing: set[str] = set()
    for mid, trial in plan.trials.items():
        config = make_train_config(trial.config)
        rate = rates.get(trial.dataset)
        if rate is None:
            missing.add(trial.dataset)
            continue
        n = config.dataset.n_train or config.dataset_info().train_size or 0
        steps = math.ceil(n / config.batch_size)
        if config.steps_per_epoch is not None:
            steps = min(steps, config.steps_per_epoch)
        examples = config.epochs * steps * config.batch_size
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
    return {"grid": grid, "train_gpu_hours": train_h, "eval_gpu_hours": eval_h,
            "total_gpu_hours": train_h + eval_h, "per_trial_train_hours": hours,
            "datasets_without_rate": sorted(missing)}


def _throughput_figure(key: str, recipe: str, device: torch.device, steps: int) -> Figure:
    base = adv_max_throughput(recipe, device, steps=steps)
    cl = adv_max_throughput(recipe, device, steps=steps, channels_last=True)
    agree = _gradient_agreement(recipe, device)
    ok = agree["min_cosine"] >= 0.999 and agree["sign_agreement"] >= 0.99
    return Figure(key=key, group="gpu", title=TITLES[key], status=INFO,
                  value=base["examples_per_s"], unit="ex/s", details={
                      "fp32": base, "channels_last": cl, "channels_last_agreement": agree,
                      "channels_last_within_tolerance": ok,
                      "note": "the projection uses fp32 (what jobs.training runs); channels-last "
                              "is reported for comparison",
                  })


def gpu_figures(device: torch.device | None, quick: bool, data_dir: str | None,
                cpu_device: torch.device) -> list[Figure]:
    group = "gpu"
    if device is None:
        reason = "no GPU: torch.cuda.is_available() is False"
        core = [skipped(f"gpu/{g}", group, f"{g} figures on cuda", reason)
                for g in ("attack", "peer", "train")]
        return core + [skipped(k, group, t, reason) for k, t in TITLES.items()]
    figures: list[Figure] = []
    if cpu_device.type != "cuda":  # groups 1-3 on the GPU as well
        s = Settings.make(quick=quick, device=device)
        b = make_bench(device, s, data_dir)
        figures += attack_figures(b, "gpu/") + peer_figures(b, "gpu/") + training_figures(b, "gpu/")
    steps = Settings.make(quick=quick, device=device).gpu_steps
    rates: dict[str, float] = {}
    for dataset, recipe, key in THROUGHPUTS:
        try:
            figure = _throughput_figure(key, recipe, device, steps)
        except Exception as err:
            figures.append(failed(key, group, TITLES[key], err))
            continue
        fp32 = figure.details["fp32"]
        rates[dataset] = fp32["examples_per_s"] * fp32["passes_per_example"]
        figures.append(figure)
    key = "gpu/paper_grid_gpu_hours"
    try:
        proj = project_paper_grid(rates)
    except Exception as err:
        figures.append(failed(key, group, TITLES[key], err))
    else:
        figures.append(Figure(key=key, group=group, title=TITLES[key], status=INFO,
                              value=proj["total_gpu_hours"], unit="h", details=proj))
    return figures
