"""Group ``exec``: how the models run, measured on the bench's device: the channels-last layout
``jobs.models.build_model`` gives the CNNs against the contiguous one, ``torch.compile``
against eager, and bf16 autocast against fp32 (``jobs.models.set_execution``). Each is a ratio
of the variant's pass time to the default's (below 1: the variant is faster), for an attack pass
(input gradient, eval mode) and a training update (forward, backward, Adam step).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.bench.figures import (
    Figure,
    Target,
    interleaved,
    per_rep,
    ratio_figure,
    skipped,
    sync,
)
from orchestrator.bench.workload import Bench

#: the models of the layout figures: key -> (model name, dataset, model kwargs)
LAYOUT_MODELS = {"mnist_cnn": ("mnist_cnn", "mnist", None), "wrn": ("wrn_small", "cifar10", {})}
PASSES = ("attack", "update")


def execution_keys(prefix: str = "") -> list[str]:
    keys = [f"{prefix}exec/channels_last_{m}_{p}" for m in LAYOUT_MODELS for p in PASSES]
    return keys + [f"{prefix}exec/{v}_{p}" for v in ("compile", "bf16") for p in PASSES]


def pass_functions(model: nn.Module, learner: nn.Module, x: torch.Tensor,
                   y: torch.Tensor) -> dict[str, Callable[[], None]]:
    """One attack pass (``model`` in eval mode) and one training update (``learner`` in train
    mode, with its own Adam)."""
    from jobs.attacks.base import input_grad

    opt = torch.optim.Adam(learner.parameters(), lr=1e-4)
    model.eval()
    learner.train()

    def update() -> None:
        loss = F.cross_entropy(learner(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {"attack": lambda: input_grad(model, x, y), "update": update}


def compare(key: str, title: str, variant_of: Callable[[nn.Module], nn.Module], default: nn.Module,
            x: torch.Tensor, y: torch.Tensor, b: Bench, target: Target | None,
            details: dict[str, Any]) -> list[Figure]:
    """``{key}_attack`` and ``{key}_update``: the pass time of ``variant_of`` (applied to copies
    of ``default``) / the default's. The variant's first calls (where ``torch.compile``
    compiles) are timed apart, in ``details["first_call_seconds"]``."""
    fns = {"variant": pass_functions(variant_of(copy.deepcopy(default)),
                                     variant_of(copy.deepcopy(default)), x, y),
           "default": pass_functions(default, copy.deepcopy(default), x, y)}
    first: dict[str, float] = {}
    for p, fn in fns["variant"].items():
        t0 = time.perf_counter()
        fn()
        sync(b.device)
        first[p] = time.perf_counter() - t0
    out = []
    for p in PASSES:
        times = interleaved({"variant": fns["variant"][p], "default": fns["default"][p]},
                            reps=b.settings.reps, warmup=b.settings.warmup, device=b.device)
        out.append(ratio_figure(f"{key}_{p}", "exec", f"{title}: {p} pass / default",
                                per_rep(times["variant"], times["default"]), target=target,
                                times=times, details={**details, "first_call_seconds": first}))
    return out


def _batch(b: Bench, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The bench's batch for MNIST, else a random batch of the dataset's shape."""
    from jobs.data import dataset_info

    if dataset == "mnist":
        return b.x, b.y
    info = dataset_info(dataset)
    gen = torch.Generator(device=b.device).manual_seed(0)
    x = torch.rand((b.settings.batch, *info.input_shape), generator=gen, device=b.device)
    return x, torch.randint(0, info.num_classes, (len(x),), generator=gen, device=b.device)


def execution_figures(b: Bench, prefix: str = "", *, compile_model: bool = True) -> list[Figure]:
    from jobs.data import dataset_info
    from jobs.models import build_model, set_execution

    out: list[Figure] = []
    for key, (name, dataset, kwargs) in LAYOUT_MODELS.items():
        kw = {"width": b.settings.width} if kwargs is None else kwargs
        torch.manual_seed(0)
        plain = build_model(name, dataset_info(dataset), layout="contiguous", **kw).to(b.device)
        x, y = _batch(b, dataset)
        out += compare(f"{prefix}exec/channels_last_{key}", f"{name} channels-last / contiguous",
                       lambda m: m.to(memory_format=torch.channels_last), plain, x, y, b,
                       Target("<=", 1.0), {"model": name, "kwargs": kw, "batch": len(x)})
    title = "torch.compile / eager (MNIST CNN)"
    if compile_model:
        out += compare(f"{prefix}exec/compile", title, lambda m: set_execution(m, compile=True),
                       b.model, b.x, b.y, b, None, {"batch": b.settings.batch})
    else:
        out += [skipped(f"{prefix}exec/compile_{p}", "exec", f"{title}: {p} pass / default",
                        "not measured in --quick (compiling takes about a minute)") for p in PASSES]
    out += compare(f"{prefix}exec/bf16", "bf16 autocast / fp32 (MNIST CNN)",
                   lambda m: set_execution(m, precision="bf16"), b.model, b.x, b.y, b, None,
                   {"batch": b.settings.batch})
    return out
