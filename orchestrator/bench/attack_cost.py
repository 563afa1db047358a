"""Group 1, ``attack``: a k-step attack on a batch / k plain forward+backward (input gradient)
passes of the same model on perturbed inputs, at every k of ``Settings.ks``. 1.0 is the
physical limit.

The reference passes run on the attack's own adversarial batch (from its warm-up run): the
perturbed inputs the attack differentiates at, not the clean batch, whose many exact zeros make
a pass a few percent cheaper on the CPU. On top of its k passes the attack scores its last
iterate with one forward pass of the inputs no earlier iterate fooled (``details``: the share of
the batch it fooled).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.bench.figures import Figure, Keep, Target, interleaved, per_rep, ratio_figure
from orchestrator.bench.workload import Bench, lp_specs

ATTACK_TARGETS = {"pgd_linf": Target("<=", 1.05), "pgd_l2": Target("<=", 1.05),
                  "slide": Target("<=", 1.15)}


def attack_keys(ks: tuple[int, ...], prefix: str = "") -> list[str]:
    return [f"{prefix}attack/{name}_k{k}" for k in ks for name in ATTACK_TARGETS]


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
    for k in s.ks:
        for name, spec in lp_specs(k).items():
            attack = make_attack(spec)
            gen = torch.Generator(device=b.device).manual_seed(0)
            run = Keep(lambda a=attack, g=gen: a(b.model, b.x, b.y, generator=g))
            x_adv = run().x_adv  # the perturbed inputs of the reference passes
            times = interleaved(
                {"attack": run, "k_passes": lambda x=x_adv, k=k: reference_passes(b.model, x, b.y, k)},
                reps=s.reps, warmup=s.warmup, device=b.device,
            )
            out.append(ratio_figure(
                f"{prefix}attack/{name}_k{k}", "attack",
                f"{spec['type']} {'SLIDE' if name == 'slide' else 'PGD'} k={k} / {k} fwd+bwd "
                "(perturbed inputs)",
                per_rep(times["attack"], times["k_passes"]), target=ATTACK_TARGETS[name],
                times=times, details={"spec": attack.spec, "batch": s.batch, "k": k,
                                      "success": float(run.result.success.float().mean())},
            ))
    return out
