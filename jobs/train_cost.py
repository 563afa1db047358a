"""What training costs, counted: forward and backward passes per training example, seconds, device.

``PassCounter`` hooks the model and counts the examples that really go through it, so the figures
are what ran, not an estimate from the configs: an attack that stops early, restarts on a subset
or scores 775 RT transforms is counted as it ran. Passes are split by the model's mode, which the
attack library sets: attacks run the model in eval mode ("attack" passes), the update's forward
runs in train mode ("update" passes). A backward pass is counted where a gradient reaches the
model's output: the attacks' input-gradient passes and the update's backward alike (an attack's
backward computes input gradients only, an update's also weight gradients; both are counted as
one backward pass per example).

Per epoch, ``metrics.jsonl`` gets ``fwd_per_example`` and ``bwd_per_example`` (all passes per
clean training input) and their split ``attack_fwd_per_example``, ``attack_bwd_per_example``,
``update_fwd_per_example``, ``update_bwd_per_example``; ``train_seconds`` (the steps' wall
seconds so far, over every epoch, resumed ones included) and ``device``. ``training_cost`` sums
them up for the final checkpoint, ``TrainResult.cost`` and the sweep's ``trial.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

PHASES = ("attack", "update")
PASS_KEYS = tuple(f"{phase}_{way}" for phase in PHASES for way in ("fwd", "bwd"))


class PassCounter:
    """Counts examples through ``model``'s forward and backward passes while entered.

    Only shapes are read, never values: counting does not wait for the device."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.counts = dict.fromkeys(PASS_KEYS, 0)
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> PassCounter:
        self._handle = self.model.register_forward_hook(self._forward)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._handle is not None
        self._handle.remove()
        self._handle = None

    def _forward(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        phase = "update" if module.training else "attack"
        n = output.shape[0]
        self.counts[f"{phase}_fwd"] += n
        if output.requires_grad:
            output.register_hook(lambda grad: self._backward(phase, n))

    def _backward(self, phase: str, n: int) -> None:
        self.counts[f"{phase}_bwd"] += n

    def per_example(self, examples: int) -> dict[str, float]:
        """The counts divided by ``examples`` (clean training inputs), as metrics keys."""
        out = {f"{k}_per_example": v / max(examples, 1) for k, v in self.counts.items()}
        out["fwd_per_example"] = out["attack_fwd_per_example"] + out["update_fwd_per_example"]
        out["bwd_per_example"] = out["attack_bwd_per_example"] + out["update_bwd_per_example"]
        return out


def describe_device(device: torch.device) -> str:
    """``cpu (2 threads)`` or ``cuda:0 (NVIDIA H200)``: what the seconds were measured on."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


COST_KEYS = ("fwd_per_example", "bwd_per_example",
             *(f"{k}_per_example" for k in PASS_KEYS))  # fmt: skip


def training_cost(metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The whole run's cost from its epoch records: passes per example over all epochs,
    ``train_seconds``, ``examples`` and the device(s) in order of use.

    Epochs resumed from a state written before costs were counted have no cost record: the
    figures are then over the counted epochs, and ``uncounted_epochs`` says how many were not."""
    counted = [m for m in metrics if all(k in m for k in (*COST_KEYS, "examples", "device"))]
    examples = sum(int(m["examples"]) for m in counted)
    out: dict[str, Any] = {
        k: sum(m[k] * m["examples"] for m in counted) / max(examples, 1) for k in COST_KEYS
    }
    out["train_seconds"] = metrics[-1].get("train_seconds", math.nan) if metrics else 0.0
    out["examples"] = examples
    out["device"] = ", ".join(dict.fromkeys(m["device"] for m in counted))
    if len(counted) < len(metrics):
        out["uncounted_epochs"] = len(metrics) - len(counted)
    return out
