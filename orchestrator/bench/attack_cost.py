"""Group 1, ``attack``: a k-step attack on a batch / k plain forward+backward (input gradient)
passes of the same model and batch. 1.0 is the physical limit (the attack also scores its last
iterate with one forward pass, so k = 10 costs at least ~1.03)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.bench.figures import Figure, Target, interleaved, per_rep, ratio_figure
from orchestrator.bench.workload import Bench, lp_specs

ATTACK_TARGETS = {"pgd_linf": Target("<=", 1.10), "pgd_l2": Target("<=", 1.10),
                  "slide": Target("<=", 1.25)}
ATTACK_KEYS = [f"attack/{name}" for name in ATTACK_TARGETS]


def reference_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> None:
    """k plain forward+backward passes for the input gradient (the attack's physical limit)."""
    for _ in range(k):
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
        del g


def attack_figures(b: Bench, prefix: str = "") -> list[Figure]:
    from jobs.attacks import make_attack

    s = b.settings
    out = []
    for name, spec in lp_specs(s.k).items():
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
            per_rep(times["attack"], times["k_passes"]), target=ATTACK_TARGETS[name], times=times,
            details={"spec": attack.spec, "batch": s.batch},
        ))
    return out
