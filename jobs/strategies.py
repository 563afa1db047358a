"""Training strategies: one interface, ``strategy(model, x, y, attacks, generator=...) -> StepOutput``.

- ``nat``: cross-entropy on the clean batch.
- ``single``: cross-entropy on one attack's adversarial batch (Adv_inf, Adv_1, Adv_2, Adv_RT).
- ``avg``: the K attacks' adversarial batches concatenated (K x B inputs), the paper's default.
- ``max``: per input, the adversarial example of the attack with the highest cross-entropy.

Attacks run in eval mode and hand the model back in the mode they found it (the attack library
does that); the strategy then runs the training forward pass in the caller's mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StepOutput:
    """What one training step produced, on the device (nothing here waits for the device).

    ``loss``: scalar to back-propagate. ``n``: B, the number of clean inputs.
    ``adv_correct``: long ``[K]``, per training attack (in the order given), how many of the
    inputs it attacked the model still classified correctly at the attack's example.
    ``attacked``: ``[K]``, how many inputs each attack ran on (B for every attack it ran).
    """

    loss: torch.Tensor
    n: int
    adv_correct: torch.Tensor
    attacked: list[int] = field(default_factory=list)


def _run_attacks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[Any],
    generator: torch.Generator | None,
) -> list[Any]:
    return [attack(model, x, y, generator=generator) for attack in attacks]


def _robust(results: Sequence[Any]) -> torch.Tensor:
    """``[K]`` long: per attack result, the inputs it did not fool (a device tensor, no sync)."""
    return torch.stack([(~r.success).sum() for r in results])


def nat(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Any], *,
        generator: torch.Generator | None = None) -> StepOutput:
    """Clean training: ``attacks`` is ignored (and empty in a valid config)."""
    none = torch.zeros(0, dtype=torch.long, device=x.device)
    return StepOutput(loss=F.cross_entropy(model(x), y), n=len(y), adv_correct=none)


def single(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Any], *,
           generator: torch.Generator | None = None) -> StepOutput:
    """Adversarial training against exactly one attack."""
    if len(attacks) != 1:
        raise ValueError(f"strategy 'single' needs exactly one attack, got {len(attacks)}")
    (res,) = _run_attacks(model, x, y, attacks, generator)
    return StepOutput(
        loss=F.cross_entropy(model(res.x_adv.detach()), y),
        n=len(y),
        adv_correct=_robust([res]),
        attacked=[len(y)],
    )


def avg(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Any], *,
        generator: torch.Generator | None = None) -> StepOutput:
    """Train on every attack's batch: inputs ``[K*B, ...]``, labels ``y`` repeated K times."""
    if not attacks:
        raise ValueError("strategy 'avg' needs at least one attack, got none")
    results = _run_attacks(model, x, y, attacks, generator)
    x_all = torch.cat([r.x_adv.detach() for r in results])
    y_all = y.repeat(len(results))
    return StepOutput(
        loss=F.cross_entropy(model(x_all), y_all),
        n=len(y),
        adv_correct=_robust(results),
        attacked=[len(y)] * len(results),
    )


def select_max(losses: torch.Tensor) -> torch.Tensor:
    """``losses`` ``[K, B]`` -> index ``[B]`` of the attack with the highest loss per input.

    Ties go to the earlier attack (``argmax`` returns the first maximum)."""
    return losses.argmax(dim=0)


def max_(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Any], *,
         generator: torch.Generator | None = None) -> StepOutput:
    """Train on the per-input worst example: the attack whose example has the highest
    cross-entropy (``AttackResult.loss``, measured by the attack in eval mode)."""
    if not attacks:
        raise ValueError("strategy 'max' needs at least one attack, got none")
    results = _run_attacks(model, x, y, attacks, generator)
    stacked = torch.stack([r.x_adv.detach() for r in results])  # [K, B, ...]
    losses = torch.stack([r.loss.detach().to(stacked.device) for r in results])  # [K, B]
    pick = select_max(losses)
    x_max = stacked[pick, torch.arange(len(y), device=stacked.device)]
    return StepOutput(
        loss=F.cross_entropy(model(x_max), y),
        n=len(y),
        adv_correct=_robust(results),
        attacked=[len(y)] * len(results),
    )


StrategyFn = Callable[..., StepOutput]

#: strategy name (as in TrainConfig.strategy) -> function
STRATEGIES: dict[str, StrategyFn] = {"nat": nat, "single": single, "avg": avg, "max": max_}


def get_strategy(name: str) -> StrategyFn:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy '{name}'; valid strategies: {', '.join(STRATEGIES)}"
        ) from None
