"""``mpo bench``: speed figures measured as ratios, side by side, in one process.

Every figure is a ratio of two timings taken in the same run, interleaved (A, B, A, B, ...), so
that a noisy machine slows both sides alike; the value is the median over repetitions, the
spread its min and max, and the absolute medians are kept too. The groups:

1. ``attack``: a k-step attack on a batch / k plain forward+backward (input gradient) passes of
   the same model and batch. 1.0 is the physical limit (the attack also scores its last iterate
   with one forward pass, so k = 10 costs at least ~1.03).
2. ``peer``: our attacks against torchattacks / foolbox on the same model, batch, budget, steps
   and device, as a speedup (peer time / our time), with both success rates.
3. ``train``: the seconds per training step of ``jobs.training.train`` for each strategy / the
   ideal: (attack passes + training passes) x a ``nat`` step.
4. ``sweep``: a Ray Tune sweep of N trivial ``toy`` trials against the same work in one process,
   and the evaluation fan-out (``jobs.evaluation.evaluate_shard`` as Ray tasks) with 1 vs 2
   workers. Driven with ``ray.tune`` directly through a thin trainable calling ``train``.
5. ``gpu``: with CUDA, groups 1-3 on the GPU, training examples/s of the MNIST and CIFAR10
   Adv_max recipes, and the GPU hours ``paper-grid`` projects from them.

A figure that cannot be measured (peer not installed, no GPU, no data) is kept with status
``skipped`` and the reason; one that fails is kept with status ``error`` and the message.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SCHEMA = "mpo-bench/1"

#: status of a figure
PASS, MISS, INFO, SKIPPED, ERROR = "pass", "miss", "info", "skipped", "error"


# ----------------------------------------------------------------------------------------------
# Figures and timing


@dataclass(frozen=True)
class Target:
    """``value <op> bound``; ``op`` is ``<=`` (a cost ratio) or ``>=`` (a speedup)."""

    op: str
    bound: float

    def met(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@dataclass
class Figure:
    key: str  # unique, e.g. "attack/pgd_linf" or "gpu/attack/pgd_linf"
    group: str
    title: str
    status: str
    value: float | None = None
    unit: str = "x"
    target: str | None = None
    spread: list[float] | None = None  # [min, max] of the per-repetition values
    reps: int | None = None
    times_s: dict[str, float] = field(default_factory=dict)  # median seconds per side
    details: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio_figure(key: str, group: str, title: str, values: list[float], *,
                 target: Target | None, times: dict[str, list[float]], unit: str = "x",
                 details: dict[str, Any] | None = None) -> Figure:
    """A figure from per-repetition values: median, [min, max], pass/miss against ``target``."""
    value = statistics.median(values)
    status = INFO if target is None else (PASS if target.met(value) else MISS)
    return Figure(
        key=key, group=group, title=title, status=status, value=value, unit=unit,
        target=None if target is None else str(target), spread=[min(values), max(values)],
        reps=len(values), times_s={k: statistics.median(v) for k, v in times.items()},
        details=details or {},
    )


def skipped(key: str, group: str, title: str, reason: str, target: Target | None = None) -> Figure:
    return Figure(key=key, group=group, title=title, status=SKIPPED, reason=reason,
                  target=None if target is None else str(target))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], Any]], *, reps: int, warmup: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds of each function per repetition, the functions run in turn (A, B, A, B, ...)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def _per_rep(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True)]


# ----------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Settings:
    """Sizes of the measurements (``quick`` keeps the whole bench under two minutes on 2 cores)."""

    quick: bool
    width: float  # MNIST CNN width multiplier
    batch: int
    k: int  # attack steps
    reps: int
    warmup: int
    fit_steps: int  # clean training of the model the attacks run on
    rt_grid: tuple[int, int, int]
    rt_reps: int
    train_k: int  # steps of each training attack
    train_steps: int  # steps timed per strategy (nat: nat_factor x as many)
    train_reps: int
    sweep_trials: int
    sweep_reps: int
    sweep_warmup: bool  # a 1-trial Tune run first, so first-use imports are not counted
    sweep_parallel: bool  # also time the sweep with 2 trials at a time
    eval_shards: int
    gpu_steps: int

    @classmethod
    def make(cls, *, quick: bool, device: torch.device) -> Settings:
        cuda = device.type == "cuda"
        if quick:
            return cls(quick=True, width=1.0 if cuda else 0.25, batch=100, k=10, reps=3, warmup=1,
                       fit_steps=50, rt_grid=(3, 3, 5), rt_reps=2, train_k=5, train_steps=4,
                       train_reps=2, sweep_trials=2, sweep_reps=1, sweep_warmup=False,
                       sweep_parallel=False, eval_shards=2, gpu_steps=5)
        return cls(quick=False, width=1.0 if cuda else 0.5, batch=500 if cuda else 100, k=20,
                   reps=7, warmup=2, fit_steps=400, rt_grid=(5, 5, 31), rt_reps=2, train_k=10,
                   train_steps=10, train_reps=3, sweep_trials=8, sweep_reps=2, sweep_warmup=True,
                   sweep_parallel=True, eval_shards=8, gpu_steps=20)


# ----------------------------------------------------------------------------------------------
# Data and model


@dataclass
class Bench:
    device: torch.device
    settings: Settings
    model: nn.Module
    x: torch.Tensor  # [B, 1, 28, 28] in [0, 1]
    y: torch.Tensor  # [B]
    data: str  # "mnist" or why synthetic data was used
    clean_acc: float
    data_dir: str | None


def _synthetic_mnist(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable MNIST-shaped data: each class a bright block at its own place, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand((n, 1, 28, 28), generator=g) * 0.25
    for c in range(10):
        r, col = divmod(c, 5)
        x[y == c, :, 4 + 10 * r : 12 + 10 * r, 2 + 5 * col : 6 + 5 * col] = 0.9
    return x, y


def load_mnist(data_dir: str | None, n_train: int, n_test: int) -> tuple[Any, Any, Any, Any, str]:
    """(x_train, y_train, x_test, y_test, source): real MNIST, else synthetic (source says why)."""
    from jobs.data import load_split

    try:
        xtr, ytr = load_split("mnist", "train", data_dir=data_dir, n=n_train)
        xte, yte = load_split("mnist", "test", data_dir=data_dir, n=n_test)
        return xtr, ytr, xte, yte, "mnist"
    except Exception as err:  # missing files: timings do not need real digits
        xtr, ytr = _synthetic_mnist(n_train, 0)
        xte, yte = _synthetic_mnist(n_test, 1)
        return xtr, ytr, xte, yte, f"synthetic (MNIST not loaded: {err})"


def make_bench(device: torch.device, settings: Settings, data_dir: str | None) -> Bench:
    """The MNIST CNN at ``settings.width``, trained clean for ``fit_steps`` steps, and one batch."""
    from jobs.data import dataset_info
    from jobs.models import build_model

    s = settings
    xtr, ytr, xte, yte, source = load_mnist(data_dir, max(s.fit_steps * 100 // 4, 1000), s.batch)
    torch.manual_seed(0)
    model = build_model("mnist_cnn", dataset_info("mnist"), width=s.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(s.fit_steps):
        idx = torch.randint(0, len(xtr), (100,), generator=g)
        loss = F.cross_entropy(model(xtr[idx].to(device)), ytr[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    x, y = xte.to(device), yte.to(device)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    return Bench(device, s, model, x, y, source, acc, data_dir)


def reference_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> None:
    """k plain forward+backward passes for the input gradient (the attack's physical limit)."""
    for _ in range(k):
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
        del g


# ----------------------------------------------------------------------------------------------
# 1. attack efficiency


def _lp_specs(k: int) -> dict[str, dict[str, Any]]:
    """MNIST budgets of the paper; evaluation step sizes (2.5 eps / k for l_inf and l_2)."""
    return {
        "pgd_linf": {"type": "linf", "epsilon": 0.3, "k": k},
        "pgd_l2": {"type": "l2", "epsilon": 2.0, "k": k},
        "slide": {"type": "l1", "epsilon": 10.0, "k": k, "a": 1.0, "perc": 99},
    }


ATTACK_TARGETS = {"pgd_linf": Target("<=", 1.10), "pgd_l2": Target("<=", 1.10),
                  "slide": Target("<=", 1.25)}


def attack_figures(b: Bench, prefix: str = "") -> list[Figure]:
    from jobs.attacks import make_attack

    s = b.settings
    out = []
    for name, spec in _lp_specs(s.k).items():
        attack = make_attack(spec)
        gen = torch.Generator(device=b.device).manual_seed(0)
        times = interleaved(
            {"attack": lambda a=attack, g=gen: a(b.model, b.x, b.y, generator=g),
             "k_passes": lambda: reference_passes(b.model, b.x, b.y, s.k)},
            reps=s.reps, warmup=s.warmup, device=b.device,
        )
        out.append(ratio_figure(
            f"{prefix}attack/{name}", "attack",
            f"{spec['type']} {'SLIDE' if name == 'slide' else 'PGD'} k={s.k} / {s.k} fwd+bwd",
            _per_rep(times["attack"], times["k_passes"]), target=ATTACK_TARGETS[name], times=times,
            details={"spec": attack.spec, "batch": s.batch},
        ))
    return out


# ----------------------------------------------------------------------------------------------
# 2. peers


def _import_quietly(name: str) -> Any:
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(name)


def _success(pred_wrong: torch.Tensor) -> float:
    return float(pred_wrong.float().mean())


def peer_pgd(b: Bench, prefix: str) -> Figure:
    key, title = f"{prefix}peer/pgd_linf_vs_torchattacks", "PGD l_inf: torchattacks.PGD / ours"
    target = Target(">=", 1.0)
    try:
        ta = _import_quietly("torchattacks")
    except Exception as err:
        return skipped(key, "peer", title, f"torchattacks not importable: {err}", target)
    from jobs.attacks import make_attack

    s = b.settings
    spec = _lp_specs(s.k)["pgd_linf"]
    ours = make_attack(spec)
    peer = ta.PGD(b.model, eps=spec["epsilon"], alpha=ours.spec["a"], steps=s.k, random_start=True)
    gen = torch.Generator(device=b.device).manual_seed(0)
    res: dict[str, Any] = {}
    times = interleaved(
        {"ours": lambda: res.__setitem__("ours", ours(b.model, b.x, b.y, generator=gen)),
         "peer": lambda: res.__setitem__("peer", peer(b.x, b.y))},
        reps=s.reps, warmup=s.warmup, device=b.device,
    )
    with torch.no_grad():
        peer_wrong = b.model(res["peer"]).argmax(1) != b.y
    return ratio_figure(key, "peer", title, _per_rep(times["peer"], times["ours"]), target=target,
                        times=times, details={
                            "spec": ours.spec, "batch": s.batch,
                            "success_ours": _success(res["ours"].success),
                            "success_peer": _success(peer_wrong),
                            "note": "ours: CW-margin gradient, best iterate kept; "
                                    "torchattacks: cross-entropy gradient, last iterate",
                        })


def _foolbox_model(b: Bench) -> tuple[Any, Any]:
    fb = _import_quietly("foolbox")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fb, fb.PyTorchModel(b.model, bounds=(0.0, 1.0), device=b.device)


def peer_slide(b: Bench, prefix: str) -> Figure:
    key, title = f"{prefix}peer/slide_vs_foolbox", "SLIDE: foolbox SparseL1Descent / ours"
    target = Target(">=", 2.0)
    try:
        fb, fmodel = _foolbox_model(b)
    except Exception as err:
        return skipped(key, "peer", title, f"foolbox not importable: {err}", target)
    from jobs.attacks import make_attack, perturbation_norm

    s = b.settings
    spec = _lp_specs(s.k)["slide"]
    ours = make_attack(spec)
    peer = fb.attacks.SparseL1DescentAttack(quantile=spec["perc"] / 100.0, abs_stepsize=spec["a"],
                                            steps=s.k, random_start=True)
    gen = torch.Generator(device=b.device).manual_seed(0)
    res: dict[str, Any] = {}
    times = interleaved(
        {"ours": lambda: res.__setitem__("ours", ours(b.model, b.x, b.y, generator=gen)),
         "peer": lambda: res.__setitem__("peer", peer(fmodel, b.x, b.y, epsilons=spec["epsilon"]))},
        reps=s.reps, warmup=s.warmup, device=b.device,
    )
    _, peer_adv, peer_success = res["peer"]
    peer_l1 = perturbation_norm(peer_adv - b.x, "l1")
    return ratio_figure(key, "peer", title, _per_rep(times["peer"], times["ours"]), target=target,
                        times=times, details={
                            "spec": ours.spec, "batch": s.batch, "steps": s.k,
                            "success_ours": _success(res["ours"].success),
                            "success_peer": _success(peer_success),
                            "max_l1_ours": float(res["ours"].norm.max()),
                            "max_l1_peer": float(peer_l1.max()),
                            "note": "foolbox: numpy percentile on the host every step, "
                                    "cross-entropy gradient, last iterate",
                        })


#: a second chunk size for the RT attack's scoring passes (reported next to the default's)
SMALL_EVAL_BATCH = 256


def _never_adversarial(fb: Any) -> Any:
    """A foolbox criterion no input meets: the spatial attack then scores its whole grid, the
    same work as ours (its early exit, once every input is misclassified, never fires)."""
    import eagerpy as ep

    class Never(fb.criteria.Criterion):
        def __repr__(self) -> str:
            return "Never()"

        def __call__(self, perturbed: Any, outputs: Any) -> Any:
            out, restore = ep.astensor_(outputs)
            return restore(out.argmax(axis=-1) < 0)

    return Never()


def _rt_times(b: Bench, s: Settings, res: dict[str, Any], ours: Any, ours_small: Any, peer: Any,
              fmodel: Any, never: Any) -> dict[str, list[float]]:
    return interleaved(
        {"ours": lambda: res.__setitem__("ours", ours(b.model, b.x, b.y)),
         "ours_small_chunks": lambda: ours_small(b.model, b.x, b.y),
         "peer_full": lambda: peer(fmodel, b.x, never),
         "peer": lambda: res.__setitem__("peer", peer(fmodel, b.x, b.y))},
        reps=s.rt_reps, warmup=1, device=b.device,
    )


def peer_rt(b: Bench, prefix: str) -> list[Figure]:
    """Two figures: the whole grid on both sides (equal work), and foolbox as shipped (it stops
    once every input is misclassified; ours always scores every transform to keep the worst)."""
    keys = {"full": (f"{prefix}peer/rt_grid_vs_foolbox",
                     "RT grid, whole grid: foolbox SpatialAttack / ours"),
            "early": (f"{prefix}peer/rt_grid_vs_foolbox_early_stop",
                      "RT grid: foolbox SpatialAttack (early stop) / ours")}
    target = Target(">=", 2.0)
    try:
        fb, fmodel = _foolbox_model(b)
    except Exception as err:
        return [skipped(k, "peer", t, f"foolbox not importable: {err}", target)
                for k, t in keys.values()]
    from jobs.attacks import make_attack

    s = b.settings
    gx, gy, ga = s.rt_grid
    spec = {"type": "rt", "spatial_limits": [3, 3, 30], "grid_granularity": [gx, gy, ga],
            "random_tries": -1}
    ours = make_attack(spec)
    ours_small = make_attack(spec, eval_batch=SMALL_EVAL_BATCH)
    peer = fb.attacks.SpatialAttack(max_translation=3, max_rotation=30, num_translations=gx,
                                    num_rotations=ga, grid_search=True)
    never = _never_adversarial(fb)
    res: dict[str, Any] = {}
    with warnings.catch_warnings():  # foolbox's meshgrid call warns on every transform
        warnings.simplefilter("ignore", UserWarning)
        times = _rt_times(b, s, res, ours, ours_small, peer, fmodel, never)
    details = {"grid": [gx, gy, ga], "transforms": gx * gy * ga, "batch": s.batch,
               "success_ours": _success(res["ours"].success),
               "success_peer": _success(res["peer"][2]),
               "eval_batch": ours.eval_batch,
               f"ours_eval_batch_{SMALL_EVAL_BATCH}_s":
                   statistics.median(times["ours_small_chunks"]),
               f"speedup_at_eval_batch_{SMALL_EVAL_BATCH}": statistics.median(
                   _per_rep(times["peer_full"], times["ours_small_chunks"]))}
    full = ratio_figure(keys["full"][0], "peer", keys["full"][1],
                        _per_rep(times["peer_full"], times["ours"]), target=target,
                        times={"ours": times["ours"], "peer": times["peer_full"]},
                        details={**details, "note": "foolbox forced through the whole grid (a "
                                 "criterion no input meets): equal work"})
    early = ratio_figure(keys["early"][0], "peer", keys["early"][1],
                         _per_rep(times["peer"], times["ours"]), target=target,
                         times={"ours": times["ours"], "peer": times["peer"]},
                         details={**details, "note": "foolbox as shipped: stops once every "
                                  "input is misclassified; ours scores every (input, transform) "
                                  "pair to keep the worst loss"})
    return [full, early]


PEER_KEYS = {"peer_pgd": ["pgd_linf_vs_torchattacks"], "peer_slide": ["slide_vs_foolbox"],
             "peer_rt": ["rt_grid_vs_foolbox", "rt_grid_vs_foolbox_early_stop"]}


def peer_figures(b: Bench, prefix: str = "") -> list[Figure]:
    out: list[Figure] = []
    for fn in (peer_pgd, peer_slide, peer_rt):
        keys = [f"{prefix}peer/{k}" for k in PEER_KEYS[fn.__name__]]
        got = _group_guard("peer", keys, lambda fn=fn: fn(b, prefix))
        out += got if isinstance(got, list) else [got]
    return out


# ----------------------------------------------------------------------------------------------
# 3. training cost per strategy


def _train_configs(s: Settings) -> dict[str, dict[str, Any]]:
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


def training_passes(config: Any) -> int:
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
    configs = {name: make_train_config(c) for name, c in _train_configs(s).items()}
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


# ----------------------------------------------------------------------------------------------
# 4. sweep overhead (Ray)


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


def shard_task(checkpoint: str, suite: Any, attack: str, start: int, stop: int,
               out_dir: str) -> str:
    """One evaluation shard as a Ray task (one thread, as the sweep's evaluation workers)."""
    from jobs.evaluation import evaluate_shard

    torch.set_num_threads(1)
    return str(evaluate_shard(checkpoint, suite, attack, start, stop, out_dir, device="cpu"))


def _warm_worker(seconds: float) -> int:
    import jobs.evaluation  # noqa: F401  (import cost paid before timing)

    time.sleep(seconds)
    return os.getpid()


def _fanout_wall(ray: Any, task: Any, shards: list[tuple[str, int, int]], ckpt: str, suite: Any,
                 out: Path, workers: int) -> float:
    suite_ref = ray.put(suite)
    t0 = time.perf_counter()
    pending: list[Any] = []
    for attack, start, stop in shards:
        if len(pending) >= workers:
            _, pending = ray.wait(pending, num_returns=1)
        pending.append(task.remote(ckpt, suite_ref, attack, start, stop, str(out)))
    ray.get(pending)
    return time.perf_counter() - t0


def sweep_figures(s: Settings) -> list[Figure]:
    group = "sweep"
    keys = {"sweep/tune_vs_inprocess": "Tune sweep (1 at a time) / same work in one process",
            "sweep/per_trial_overhead": "Tune overhead per trial",
            "sweep/tune_parallel_vs_inprocess": "Tune sweep (2 at a time) / one process",
            "sweep/eval_fanout_speedup": "evaluation fan-out: 1 worker / 2 workers"}
    try:
        import ray
    except Exception as err:
        return [skipped(k, group, t, f"ray not importable: {err}") for k, t in keys.items()]
    with ray_session(ray) as started:
        driver = "ray.tune directly (thin trainable calling jobs.training.train)"
        cpus = float(ray.cluster_resources().get("CPU", 0))
        if cpus < 2:
            return [skipped(k, group, t, f"the Ray cluster has {cpus:g} CPUs; need 2")
                    for k, t in keys.items()]
        root = Path(tempfile.mkdtemp(prefix="mpo-bench-sweep-"))
        try:
            n = s.sweep_trials
            common = {"driver": driver, "trials": n, "cluster_started_here": started,
                      "cluster_cpus": cpus, "tune_warmed_up": s.sweep_warmup,
                      "trial": "toy Adv_max (linear, linf + l1, k 5), 1 epoch of 2000 points"}
            if s.sweep_warmup:
                _tune_wall(1, root / "warm", concurrent=1)  # Tune's own first-use imports
            serial, parallel, local = [], [], []
            for r in range(s.sweep_reps):
                local.append(_inprocess_wall(n, root / f"local-{r}"))
                serial.append(_tune_wall(n, root / f"serial-{r}", concurrent=1))
                if s.sweep_parallel:
                    parallel.append(_tune_wall(n, root / f"parallel-{r}", concurrent=2))
            figures = [
                ratio_figure("sweep/tune_vs_inprocess", group, keys["sweep/tune_vs_inprocess"],
                             _per_rep(serial, local), target=None,
                             times={"tune_serial": serial, "in_process": local}, details=common),
                ratio_figure("sweep/per_trial_overhead", group, keys["sweep/per_trial_overhead"],
                             [(a - b) / n for a, b in zip(serial, local, strict=True)],
                             target=None, unit="s", times={}, details=common),
            ]
            key = "sweep/tune_parallel_vs_inprocess"
            figures.append(
                ratio_figure(key, group, keys[key], _per_rep(parallel, local), target=None,
                             times={"tune_parallel": parallel, "in_process": local}, details=common)
                if parallel else skipped(key, group, keys[key], "not measured in --quick"))
            figures.append(_fanout_figure(ray, s, root, keys["sweep/eval_fanout_speedup"]))
            return figures
        finally:
            shutil.rmtree(root, ignore_errors=True)


FANOUT_HIDDEN = 2048


def _fanout_figure(ray: Any, s: Settings, root: Path, title: str) -> Figure:
    from jobs.evaluation import load_suite, plan_shards
    from jobs.training import train

    # ~0.5 s per shard on one core: enough work that the task overhead does not dominate
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
        one.append(_fanout_wall(ray, task, shards, ckpt, suite, root / f"fan1-{r}", 1))
        two.append(_fanout_wall(ray, task, shards, ckpt, suite, root / f"fan2-{r}", 2))
    return ratio_figure("sweep/eval_fanout_speedup", "sweep", title, _per_rep(one, two),
                        target=None, times={"one_worker": one, "two_workers": two},
                        details={"shards": len(shards), "points_per_shard": per, "suite": "toy",
                                 "model": f"mlp hidden {FANOUT_HIDDEN}", "ideal": 2.0})


@contextlib.contextmanager
def ray_session(ray: Any) -> Iterator[bool]:
    """Reuse a running Ray connection (yields False), else start a local cluster and shut it
    down afterwards (yields True)."""
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


# ----------------------------------------------------------------------------------------------
# 5. GPU: training throughput and the paper-grid projection


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
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
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
        suite = plan.suites[dataset]
        spec = suite.attack(shard.attack).spec
        bounds = (0.0, 1.0)
        passes = make_attack(spec, bounds=bounds).total_steps
        eval_h += (shard.stop - shard.start) * passes / rate / 3600
    return {"grid": grid, "train_gpu_hours": train_h, "eval_gpu_hours": eval_h,
            "total_gpu_hours": train_h + eval_h, "per_trial_train_hours": hours,
            "datasets_without_rate": sorted(missing)}


def gpu_figures(device: torch.device | None, quick: bool, data_dir: str | None,
                cpu_device: torch.device) -> list[Figure]:
    group = "gpu"
    titles = {"gpu/mnist_adv_max_examples_per_s": "MNIST Adv_max training examples/s",
              "gpu/cifar10_wrn_adv_max_examples_per_s": "CIFAR10 WRN Adv_max training examples/s",
              "gpu/paper_grid_gpu_hours": "paper-grid projected GPU hours"}
    if device is None:
        reason = "no GPU: torch.cuda.is_available() is False"
        core = [skipped(f"gpu/{g}", group, f"{g} figures on cuda", reason)
                for g in ("attack", "peer", "train")]
        return core + [skipped(k, group, t, reason) for k, t in titles.items()]
    figures: list[Figure] = []
    if cpu_device.type != "cuda":  # groups 1-3 on the GPU as well
        s = Settings.make(quick=quick, device=device)
        b = make_bench(device, s, data_dir)
        figures += attack_figures(b, "gpu/") + peer_figures(b, "gpu/") + training_figures(b, "gpu/")
    steps = Settings.make(quick=quick, device=device).gpu_steps
    rates: dict[str, float] = {}
    for dataset, recipe, key in (("mnist", "mnist-paper", "gpu/mnist_adv_max_examples_per_s"),
                                 ("cifar10", "cifar10-paper",
                                  "gpu/cifar10_wrn_adv_max_examples_per_s")):
        try:
            base = adv_max_throughput(recipe, device, steps=steps)
            cl = adv_max_throughput(recipe, device, steps=steps, channels_last=True)
            agree = _gradient_agreement(recipe, device)
            ok = agree["min_cosine"] >= 0.999 and agree["sign_agreement"] >= 0.99
            rates[dataset] = base["examples_per_s"] * base["passes_per_example"]
            figures.append(Figure(
                key=key, group=group, title=titles[key], status=INFO,
                value=base["examples_per_s"], unit="ex/s", details={
                    "fp32": base, "channels_last": cl, "channels_last_agreement": agree,
                    "channels_last_within_tolerance": ok,
                    "note": "the projection uses fp32 (what jobs.training runs); channels-last "
                            "is reported for comparison",
                }))
        except Exception as err:
            figures.append(Figure(key=key, group=group, title=titles[key], status=ERROR,
                                  reason=f"{type(err).__name__}: {err}"))
    key = "gpu/paper_grid_gpu_hours"
    try:
        proj = project_paper_grid(rates)
        figures.append(Figure(key=key, group=group, title=titles[key], status=INFO,
                              value=proj["total_gpu_hours"], unit="h", details=proj))
    except Exception as err:
        figures.append(Figure(key=key, group=group, title=titles[key], status=ERROR,
                              reason=f"{type(err).__name__}: {err}"))
    return figures


# ----------------------------------------------------------------------------------------------
# Machine, versions, the whole run


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
    from importlib import metadata

    from jobs import __version__

    out: dict[str, str | None] = {"mpo": __version__, "python": sys.version.split()[0]}
    for dist in ("torch", "ray", "foolbox", "torchattacks", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["cuda"] = torch.version.cuda
    return out


def _group_guard(group: str, keys: list[str], fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
        tb = traceback.format_exc()[-3000:]
        return [Figure(key=k, group=group, title=k, status=ERROR, reason=reason,
                       details={"traceback": tb}) for k in keys]


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
    figures += _group_guard("attack", [f"attack/{n}" for n in ATTACK_TARGETS],
                            lambda: attack_figures(b))
    say("2/5 peers: torchattacks, foolbox")
    figures += peer_figures(b)
    say("3/5 training cost per strategy")
    figures += _group_guard("train", [f"train/{n}" for n in ("nat_step", "single", "avg", "max")],
                            lambda: training_figures(b))
    if sweep:
        say(f"4/5 sweep overhead ({s.sweep_trials} toy trials on Ray Tune)")
        figures += _group_guard("sweep", ["sweep/tune_vs_inprocess", "sweep/per_trial_overhead",
                                          "sweep/tune_parallel_vs_inprocess",
                                          "sweep/eval_fanout_speedup"],
                                lambda: sweep_figures(s))
    else:
        figures += [skipped(k, "sweep", k, "sweep figures not requested") for k in (
            "sweep/tune_vs_inprocess", "sweep/per_trial_overhead",
            "sweep/tune_parallel_vs_inprocess", "sweep/eval_fanout_speedup")]
    gpu = torch.device("cuda") if torch.cuda.is_available() else None
    say("5/5 GPU" + ("" if gpu else ": skipped (no GPU)"))
    figures += _group_guard("gpu", ["gpu/all"], lambda: gpu_figures(gpu, quick, data_dir, dev))
    counts = {st: sum(f.status == st for f in figures) for st in (PASS, MISS, INFO, SKIPPED, ERROR)}
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
        "summary": counts,
        "figures": [f.to_dict() for f in figures],
    }
