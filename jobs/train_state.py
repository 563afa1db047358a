"""The resumable state of one training run: what ``state.pt`` holds, and how it is built,
restored and saved.

A run is resumable bit for bit because every source of randomness is an explicit generator
whose state is saved with the weights: data order, augmentation, attack starts, the strategy's
own draws (``random``, ``eat``; with E-AT's running accuracies), and, to be safe against code
that uses them, torch's global CPU/CUDA state and Python's ``random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jobs.checkpoint import load_checkpoint, save_checkpoint
from jobs.config import TrainConfig
from jobs.errors import MpoError
from jobs.strategies import TrainingStrategy
from jobs.train_cost import training_cost


@dataclass
class Generators:
    data: torch.Generator  # epoch permutations (CPU)
    augment: torch.Generator  # crop + flip
    attack: torch.Generator  # random starts of the training attacks

    @classmethod
    def seeded(cls, seed: int, device: torch.device) -> Generators:
        return cls(
            data=torch.Generator().manual_seed(seed),
            augment=torch.Generator(device=device).manual_seed(seed + 1),
            attack=torch.Generator(device=device).manual_seed(seed + 2),
        )

    def state(self, device: torch.device) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        out: dict[str, Any] = {
            "data": self.data.get_state(),
            "augment": self.augment.get_state(),
            "attack": self.attack.get_state(),
            "torch_cpu": torch.get_rng_state(),
            "python": [version, list(internal), gauss],
        }
        if device.type == "cuda":
            out["torch_cuda"] = torch.cuda.get_rng_state_all()
        return out

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        self.data.set_state(state["data"])
        self.augment.set_state(state["augment"])
        self.attack.set_state(state["attack"])
        torch.set_rng_state(state["torch_cpu"])
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if device.type == "cuda" and "torch_cuda" in state:
            torch.cuda.set_rng_state_all(state["torch_cuda"])


@dataclass
class TrainingState:
    """Everything a run carries from one epoch to the next (and ``state.pt`` stores)."""

    config: TrainConfig
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    gens: Generators
    strategy: TrainingStrategy
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken (the learning rate is a function of it)
    metrics: list[dict[str, Any]] = field(default_factory=list)


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    opt = config.optimizer
    if opt.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
    )


def new_state(config: TrainConfig, device: torch.device, strategy: TrainingStrategy) -> TrainingState:
    """A fresh run: the model initialised from ``config.seed``, its optimiser, seeded generators,
    and ``strategy`` (new, seeded by its maker).

    Seeds torch's and Python's global generators: call it inside ``torch.random.fork_rng``."""
    from jobs.finetune import build_trainable

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = build_trainable(config, device)
    return TrainingState(
        config=config, device=device, model=model, optimizer=build_optimizer(config, model),
        gens=Generators.seeded(config.seed, device), strategy=strategy,
    )  # fmt: skip


def _config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted((set(saved) | set(current)) - {"label"})
    return [k for k in keys if saved.get(k) != current.get(k)]


def restore_state(state: TrainingState, path: Path) -> None:
    """Load ``path`` (a ``state.pt``) into ``state``; ``MpoError`` if another config wrote it."""
    saved = load_checkpoint(path, map_location=state.device)
    diff = _config_diff(saved["config"], state.config.to_dict())
    if diff:
        raise MpoError(
            f"{path} belongs to a different training config (fields differ: "
            f"{', '.join(diff)}); use another --out folder or delete it to start over"
        )
    extra = saved["extra"]
    state.model.load_state_dict(saved["state_dict"])
    state.optimizer.load_state_dict(extra["optimizer"])
    state.gens.restore(extra["rng"], state.device)
    # state files written before strategies had state hold none (nat, single, avg, max)
    state.strategy.load_state_dict(extra.get("strategy", {}))
    state.epoch, state.step = int(extra["epoch"]), int(extra["step"])
    state.metrics = list(extra["metrics"])


def save_state(state: TrainingState, path: Path) -> None:
    """Write ``state`` to ``path`` atomically (after each epoch)."""
    save_checkpoint(
        path,
        model=state.model,
        config=state.config.to_dict(),
        extra={
            "optimizer": state.optimizer.state_dict(),
            "epoch": state.epoch,
            "step": state.step,
            "rng": state.gens.state(state.device),
            "strategy": state.strategy.state_dict(),
            "metrics": state.metrics,
            "model_id": state.config.model_id(),
        },
    )


def save_final_checkpoint(state: TrainingState, path: Path,
                          cost: dict[str, Any] | None = None) -> None:
    """The trained model in ``jobs.checkpoint`` format, with its config, final metrics and cost
    (``cost``: with the ancestors' for a fine-tuned model; by default the run's own)."""
    config = state.config
    save_checkpoint(
        path,
        model=state.model,
        config=config.to_dict(),
        extra={
            "model_id": config.model_id(),
            "label": config.label,
            "epochs": config.epochs,
            "steps": state.step,
            "final_metrics": state.metrics[-1] if state.metrics else {},
            "cost": training_cost(state.metrics) if cost is None else cost,
        },
    )
