"""Adversarial training of one model, in a plain Python process (the Ray trainable wraps this).

``train(config, out_dir)`` writes into ``out_dir``:

- ``config.json``: the validated config (attack specs normalised; ``load_train_config`` reads it);
- ``state.pt``: everything needed to resume, rewritten atomically after every epoch: weights,
  optimiser state, the global step (the learning rate is a function of it), the random generators
  (data order, augmentation, attack starts, torch's global CPU/CUDA state, Python's ``random``)
  and the metrics so far. A run restarted on the same folder continues from the last completed
  epoch and ends with the same weights, bit for bit, as a run that was never interrupted;
- ``metrics.jsonl``: one JSON object per completed epoch;
- ``checkpoint.pt``: the final weights and config (``jobs.checkpoint`` format), written at the end.

Randomness is drawn from explicit generators only, so that saving their states is enough to
resume exactly. ``start_small`` (the paper's warm-up) divides every training attack's radius,
and the RT limits, by 3 during the first epoch.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jobs.checkpoint import load_checkpoint, save_checkpoint
from jobs.config import TrainConfig, make_train_config, scale_spec
from jobs.errors import DeviceError, MpoError
from jobs.io import write_json_atomic, write_jsonl_atomic
from jobs.strategies import get_strategy

START_SMALL_FACTOR = 1.0 / 3.0

STATE_FILE = "state.pt"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


class TrainingDivergedError(MpoError, RuntimeError):
    """The training loss became NaN or infinite; names the epoch and step."""


class ResumeError(MpoError, RuntimeError):
    """``out_dir`` holds the state of a different training run."""


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    metrics: list[dict[str, Any]]
    resumed_from_epoch: int


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device '{device}': CUDA is not available on this machine; use cpu or auto")
    return dev


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    opt = config.optimizer
    if opt.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
    )


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The step's learning rate: ``lr * gamma^(milestones passed)``, milestones as fractions."""
    opt = config.optimizer
    passed = sum(1 for m in opt.milestones if step >= round(m * total_steps))
    return opt.lr * opt.gamma**passed


def training_attacks(config: TrainConfig, *, factor: float = 1.0) -> list[Any]:
    """The config's attacks; ``factor`` scales each one's radius (and RT limits)."""
    from jobs.attacks import make_attack

    bounds = config.dataset_info().bounds
    specs = config.attacks if factor == 1.0 else [scale_spec(s, factor) for s in config.attacks]
    return [make_attack(spec, bounds=bounds) for spec in specs]


def metric_names(families: list[str]) -> list[str]:
    """``adv_acc/<family>`` per training attack (``#2``, ``#3`` for repeated families)."""
    names, seen = [], {}
    for fam in families:
        seen[fam] = seen.get(fam, 0) + 1
        names.append(f"adv_acc/{fam}" if seen[fam] == 1 else f"adv_acc/{fam}#{seen[fam]}")
    return names


# ----------------------------------------------------------------------------------------------
# Random state


@dataclass
class _Generators:
    data: torch.Generator  # epoch permutations (CPU)
    augment: torch.Generator  # crop + flip
    attack: torch.Generator  # random starts of the training attacks

    @classmethod
    def seeded(cls, seed: int, device: torch.device) -> _Generators:
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


# ----------------------------------------------------------------------------------------------
# Files


def _config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted((set(saved) | set(current)) - {"label"})
    return [k for k in keys if saved.get(k) != current.get(k)]


# ----------------------------------------------------------------------------------------------
# Training


def train(
    config: TrainConfig | dict[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    device: str | torch.device | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = True,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``config`` into ``out_dir``; resume from ``out_dir/state.pt`` when present.

    ``on_epoch(metrics)`` runs after each epoch's state is saved; ``on_step(info)`` after every
    batch with ``{"epoch", "step", "steps_per_epoch", "loss"}`` (for progress bars).
    Raises ``TrainingDivergedError`` on a NaN/inf loss (the last saved state stays as it was),
    ``ResumeError`` when ``out_dir`` holds another config's state.
    """
    from jobs.data import augment_batch, load_split
    from jobs.models import build_model

    if not isinstance(config, TrainConfig):
        config = make_train_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    info = config.dataset_info()
    strategy = get_strategy(config.strategy)
    model_id = config.model_id()
    config_dict = config.to_dict()

    x_all, y_all = load_split(
        config.dataset.name,
        "train",
        data_dir=data_dir,
        download=download,
        n=config.dataset.n_train,
        seed=config.seed,
        params=config.dataset.params or None,
    )
    x_all, y_all = x_all.to(dev), y_all.to(dev)
    n_train, bs = len(x_all), config.batch_size
    steps_per_epoch = math.ceil(n_train / bs)
    if config.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    total_steps = config.epochs * steps_per_epoch
    augmentation = info.augmentation if config.augment in (None, True) else None

    families = config.families()
    names = metric_names(families)
    attacks_full = training_attacks(config)
    attacks_small = (
        training_attacks(config, factor=START_SMALL_FACTOR) if config.start_small else attacks_full
    )

    state_path, ckpt_path = out / STATE_FILE, out / CHECKPOINT_FILE
    fork_devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        model = build_model(config.model.name, info, **config.model.kwargs).to(dev)
        optimizer = build_optimizer(config, model)
        gens = _Generators.seeded(config.seed, dev)
        start_epoch, global_step, metrics = 0, 0, []

        if resume and state_path.exists():
            state = load_checkpoint(state_path, map_location=dev)
            diff = _config_diff(state["config"], config_dict)
            if diff:
                raise ResumeError(
                    f"{state_path} belongs to a different training config (fields differ: "
                    f"{', '.join(diff)}); use another --out folder or delete it to start over"
                )
            extra = state["extra"]
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(extra["optimizer"])
            gens.restore(extra["rng"], dev)
            start_epoch, global_step = int(extra["epoch"]), int(extra["step"])
            metrics = list(extra["metrics"])
        write_json_atomic(out / CONFIG_FILE, config_dict)
        write_jsonl_atomic(out / METRICS_FILE, metrics)
        resumed_from = start_epoch

        for epoch in range(start_epoch, config.epochs):
            attacks = attacks_small if epoch == 0 else attacks_full
            model.train()
            perm = torch.randperm(n_train, generator=gens.data).to(dev)
            t0 = time.perf_counter()
            loss_sum, seen, clean_correct = 0.0, 0, 0
            adv_correct = [0] * len(attacks)
            for step in range(steps_per_epoch):
                idx = perm[step * bs : (step + 1) * bs]
                xb, yb = x_all[idx], y_all[idx]
                if augmentation is not None:
                    xb = augment_batch(xb, augmentation, generator=gens.augment)
                lr = learning_rate(config, global_step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                result = strategy(model, xb, yb, attacks, generator=gens.attack)
                loss_value = float(result.loss.detach())
                if not math.isfinite(loss_value):
                    last = (
                        f"the last good state is {state_path} (after epoch {start_epoch})"
                        if state_path.exists() and epoch > 0
                        else "no epoch completed, so there is no saved state"
                    )
                    raise TrainingDivergedError(
                        f"training diverged: loss = {loss_value} at epoch {epoch + 1}, "
                        f"step {step + 1} of {steps_per_epoch} (global step {global_step + 1}); "
                        f"{last}. Try a lower learning rate."
                    )
                optimizer.zero_grad(set_to_none=True)
                result.loss.backward()
                optimizer.step()
                global_step += 1

                model.eval()
                with torch.no_grad():
                    clean_correct += int((model(xb).argmax(1) == yb).sum())
                model.train()
                loss_sum += loss_value * result.n
                seen += result.n
                for i, c in enumerate(result.adv_correct):
                    adv_correct[i] += c
                if on_step is not None:
                    on_step(
                        {"epoch": epoch + 1, "step": step + 1,
                         "steps_per_epoch": steps_per_epoch, "loss": loss_value}
                    )
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds = time.perf_counter() - t0
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": global_step,
                "train_loss": loss_sum / max(seen, 1),
                "clean_acc": clean_correct / max(seen, 1),
                "lr": lr,
                "start_small": bool(config.start_small and epoch == 0),
                "examples_per_s": seen / seconds if seconds > 0 else float("nan"),
                "seconds": seconds,
            }
            for name, c in zip(names, adv_correct, strict=True):
                record[name] = c / max(seen, 1)
            metrics.append(record)
            start_epoch = epoch + 1
            save_checkpoint(
                state_path,
                model=model,
                config=config_dict,
                extra={
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "step": global_step,
                    "rng": gens.state(dev),
                    "metrics": metrics,
                    "model_id": model_id,
                },
            )
            write_jsonl_atomic(out / METRICS_FILE, metrics)
            if on_epoch is not None:
                on_epoch(dict(record))

        if not ckpt_path.exists() or resumed_from < config.epochs:
            save_checkpoint(
                ckpt_path,
                model=model,
                config=config_dict,
                extra={
                    "model_id": model_id,
                    "label": config.label,
                    "epochs": config.epochs,
                    "steps": global_step,
                    "final_metrics": metrics[-1] if metrics else {},
                },
            )
    return TrainResult(checkpoint=ckpt_path, metrics=metrics, resumed_from_epoch=resumed_from)


def load_trained(
    path: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Load a ``checkpoint.pt`` (or ``state.pt``): (model in eval mode, its config, the payload)."""
    from jobs.models import build_model

    dev = resolve_device(device)
    payload = load_checkpoint(path, map_location=dev)
    config = make_train_config(payload["config"], source=f"{path} (embedded config)")
    model = build_model(config.model.name, config.dataset_info(), **config.model.kwargs).to(dev)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, config, payload


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500) -> float:
    """Accuracy of ``model`` (eval mode) on ``x`` ``[N, ...]``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(len(x), 1)


__all__ = [
    "CHECKPOINT_FILE",
    "START_SMALL_FACTOR",
    "STATE_FILE",
    "ResumeError",
    "TrainResult",
    "TrainingDivergedError",
    "clean_accuracy",
    "learning_rate",
    "load_trained",
    "resolve_device",
    "train",
    "training_attacks",
]
