"""Adversarial training of one model, in a plain Python process (the Ray trainable wraps this).

``train(config, out_dir)`` writes into ``out_dir``:

- ``config.json``: the validated config (attack specs normalised; ``load_train_config`` reads it);
- ``state.pt``: everything needed to resume, rewritten atomically after every epoch: weights,
  optimiser state, the global step (the learning rate is a function of it), the random generators
  (data order, augmentation, attack starts, torch's global CPU/CUDA state, Python's ``random``)
  and the metrics so far. A run restarted on the same folder continues from the last completed
  epoch and ends with the same weights, bit for bit, as a run that was never interrupted;
- ``metrics.jsonl``: one JSON object per completed epoch: ``train_loss`` (mean cross-entropy of
  the training forward passes, per clean input), ``clean_acc`` (accuracy in eval mode at the end
  of the epoch on the first ``CLEAN_ACC_EXAMPLES`` unaugmented training inputs: a fixed subset,
  so epochs compare), ``adv_acc/<family>`` (per training attack, the fraction of the inputs it
  attacked that it did not fool, at the model of each step), ``attacked/<family>`` (the share
  of the epoch's inputs it attacked: 1, or the draw frequency for random and eat), ``lr``,
  ``start_small``, ``examples``, ``seconds`` and ``examples_per_s`` (the epoch's steps, the
  clean-accuracy pass excluded), and the cost (``jobs.train_cost``): passes per example,
  ``train_seconds``, ``device``;
- ``checkpoint.pt``: the final weights and config (``jobs.checkpoint`` format), written at the end.

Randomness is drawn from explicit generators only, so that saving their states is enough to
resume exactly. ``start_small`` (the paper's warm-up) divides every training attack's radius,
and the RT limits, by 3 during the first epoch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from jobs.checkpoint import load_checkpoint
from jobs.config import TrainConfig, make_train_config, scale_spec
from jobs.errors import ConfigError, MpoError
from jobs.finetune import initial_weights, lineage_of, resolve_init, with_lineage
from jobs.io import write_json_atomic, write_jsonl_atomic
from jobs.models import set_execution
from jobs.strategies import StepOutput, get_strategy
from jobs.train_cost import PassCounter, describe_device, training_cost
from jobs.train_state import (
    TrainingState,
    build_optimizer,
    new_state,
    restore_state,
    save_final_checkpoint,
    save_state,
)

if TYPE_CHECKING:
    from jobs.attacks.base import Attack

START_SMALL_FACTOR = 1.0 / 3.0

STATE_FILE = "state.pt"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"

#: Steps between the host's reads of the training metrics (divergence check, ``on_step``).
SYNC_EVERY = 50
#: ``clean_acc`` is measured at the end of each epoch on this many (unaugmented) training inputs.
CLEAN_ACC_EXAMPLES = 1000


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    metrics: list[dict[str, Any]]
    resumed_from_epoch: int
    #: ``jobs.train_cost.training_cost`` of the metrics: passes per example, seconds, device
    cost: dict[str, Any]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device '{device}': not a device; allowed: auto (cuda when available), "
                          "cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}': CUDA is not available on this machine; use cpu or auto")
    return dev


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The step's learning rate: ``lr * gamma^(milestones passed)``, milestones as fractions."""
    opt = config.optimizer
    passed = sum(1 for m in opt.milestones if step >= round(m * total_steps))
    return opt.lr * opt.gamma**passed


def training_attacks(config: TrainConfig, *, factor: float = 1.0) -> list[Attack]:
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


@dataclass(frozen=True)
class TrainingData:
    """The training split on the device, and how an epoch walks through it."""

    x: torch.Tensor  # [N, ...]
    y: torch.Tensor  # [N]
    steps_per_epoch: int
    total_steps: int
    augmentation: str | None

    def batch(self, perm: torch.Tensor, step: int, batch_size: int,
              augment_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``step`` of the epoch whose order is ``perm``, augmented when the config says so."""
        idx = perm[step * batch_size : (step + 1) * batch_size]
        xb, yb = self.x[idx], self.y[idx]
        if self.augmentation is not None:
            from jobs.data import augment_batch

            xb = augment_batch(xb, self.augmentation, generator=augment_gen)
        return xb, yb


def load_data(config: TrainConfig, device: torch.device, *,
              data_dir: str | os.PathLike[str] | None, download: bool) -> TrainingData:
    """The config's training split, moved to ``device`` once, and the epoch plan."""
    from jobs.data import load_split

    x, y = load_split(
        config.dataset.name, "train", data_dir=data_dir, download=download,
        n=config.dataset.n_train, seed=config.seed, params=config.dataset.params or None,
    )  # fmt: skip
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    if config.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    augmentation = config.dataset_info().augmentation if config.augment in (None, True) else None
    return TrainingData(
        x=x.to(device), y=y.to(device), steps_per_epoch=steps_per_epoch,
        total_steps=total_steps(config.epochs, steps_per_epoch), augmentation=augmentation,
    )  # fmt: skip


def total_steps(epochs: float, steps_per_epoch: int) -> int:
    """All the run's optimiser steps: ``epochs`` (a fraction allowed) of ``steps_per_epoch``,
    at least one."""
    return max(1, math.ceil(epochs * steps_per_epoch - 1e-9))


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
    sync_every: int = SYNC_EVERY,
    precision: str = "fp32",
    compile: bool = False,
) -> TrainResult:
    """Train ``config`` into ``out_dir``; resume from ``out_dir/state.pt`` when present.

    ``precision`` and ``compile`` set how the model runs (``jobs.models.set_execution``: bf16
    or TF32 autocast, ``torch.compile``); they are how this process computes, like ``device``,
    not part of the config or the model id.

    The host waits for the device only every ``sync_every`` steps and at the end of each epoch
    (a sync point): no training step synchronises on its own (the attacks may: see
    ``jobs.strategies``). ``on_epoch(metrics)`` runs after each epoch's state is saved;
    ``on_step(info)`` at each sync point with ``{"epoch", "step", "steps_per_epoch", "loss"}``
    (``loss``: the mean over the steps since the previous sync point; for progress bars).

    Raises ``MpoError`` at the first sync point after a NaN/inf loss, naming the
    first such step (epoch, step, global step); the state saved after the last completed epoch
    stays as it was (the steps after the bad one are discarded with the in-memory model).
    Raises ``MpoError`` when ``out_dir`` holds another config's state.
    """
    if sync_every < 1:
        raise ValueError(f"sync_every = {sync_every}: must be >= 1")
    if not isinstance(config, TrainConfig):
        config = make_train_config(config)
    if config.init is not None and config.init.parent is None:
        config = resolve_init(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    data = load_data(config, dev, data_dir=data_dir, download=download)
    # Seeding and restoring touch torch's global generators: keep the caller's untouched.
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        # the strategy's own draws (random, eat) get a stream apart from Generators.seeded's
        state = new_state(config, dev, get_strategy(config.strategy, seed=config.seed + 3))
        set_execution(state.model, precision=precision, compile=compile)
        parent_cost = _start(config, state, out, resume=resume)
        resumed_from = state.epoch
        _epochs(config, state, data, out, on_epoch=on_epoch, on_step=on_step,
                sync_every=sync_every)
        cost = cost_with_ancestors(config, state.metrics, parent_cost)
        ckpt_path = out / CHECKPOINT_FILE
        if not ckpt_path.exists() or resumed_from < config.epoch_count:
            save_final_checkpoint(state, ckpt_path, cost=cost)
    return TrainResult(checkpoint=ckpt_path, metrics=state.metrics, resumed_from_epoch=resumed_from,
                       cost=cost)


def _start(config: TrainConfig, state: TrainingState, out: Path, *, resume: bool) -> dict[str, Any]:
    """Where ``state`` starts: its saved state (resuming), else the parent's weights for a
    fine-tuning (``init``), else the seeded initialisation; returns the parent's cost record."""
    parent_cost: dict[str, Any] = {}
    resuming = resume and (out / STATE_FILE).exists()
    if config.init is not None:
        weights, parent_cost = initial_weights(config, out)
        if not resuming:
            state.model.load_state_dict(weights)
    if resuming:
        restore_state(state, out / STATE_FILE)
    return parent_cost


def cost_with_ancestors(config: TrainConfig, metrics: list[dict[str, Any]],
                        parent_cost: dict[str, Any]) -> dict[str, Any]:
    """The run's own cost (``jobs.train_cost.training_cost``), and for a fine-tuned model its
    ``lineage`` and ``with_ancestors`` (``jobs.finetune``)."""
    own = training_cost(metrics)
    if config.init is None or config.init.parent is None:
        return own
    parent = lineage_of(parent_cost, config.init.parent)
    if not parent:  # an external parent: its training is not ours to count, and unknown
        parent = {config.init.parent: {"passes": math.nan, "examples": math.nan,
                                       "train_seconds": math.nan}}
    return with_lineage(own, config.model_id(), [parent])


def _epochs(config: TrainConfig, state: TrainingState, data: TrainingData, out: Path, *,
            on_epoch: Callable[[dict[str, Any]], None] | None,
            on_step: Callable[[dict[str, Any]], None] | None, sync_every: int) -> None:
    """The epochs ``state`` has not trained yet, each saved (state, metrics) before
    ``on_epoch``; the first epoch with every attack scaled by 1/3 under ``start_small``."""
    attacks_full = training_attacks(config)
    attacks_small = (
        training_attacks(config, factor=START_SMALL_FACTOR) if config.start_small else attacks_full
    )
    state_path = out / STATE_FILE
    write_json_atomic(out / CONFIG_FILE, config.to_dict())
    write_jsonl_atomic(out / METRICS_FILE, state.metrics)
    for epoch in range(state.epoch, config.epoch_count):
        attacks = attacks_small if epoch == 0 else attacks_full
        steps = min(data.steps_per_epoch, data.total_steps - epoch * data.steps_per_epoch)
        record = train_epoch(state, data, attacks, state_path=state_path,
                             on_step=on_step, sync_every=sync_every, steps=steps)
        state.metrics.append(record)
        state.epoch = epoch + 1
        save_state(state, state_path)
        write_jsonl_atomic(out / METRICS_FILE, state.metrics)
        if on_epoch is not None:
            on_epoch(dict(record))


def train_epoch(
    state: TrainingState,
    data: TrainingData,
    attacks: list[Attack],
    *,
    state_path: Path,
    on_step: Callable[[dict[str, Any]], None] | None,
    sync_every: int,
    steps: int | None = None,
) -> dict[str, Any]:
    """One pass over a fresh permutation of the data (its first ``steps`` batches: the last
    epoch of a fractional ``epochs``); returns the epoch's metrics record.

    The steps' metrics stay on the device; the host reads them every ``sync_every`` steps and
    at the end of the epoch (``EpochMeter.sync``), the only points where this loop waits for
    the device."""
    config, model, dev = state.config, state.model, state.device
    steps = data.steps_per_epoch if steps is None else steps
    model.train()
    perm = torch.randperm(len(data.x), generator=state.gens.data).to(dev)
    meter = EpochMeter(steps, len(attacks), dev)
    t0 = time.perf_counter()
    with PassCounter(model) as passes:
        for step in range(steps):
            xb, yb = data.batch(perm, step, config.batch_size, state.gens.augment)
            meter.add(train_step(state, data, attacks, xb, yb))
            if (step + 1) % sync_every == 0 or step + 1 == steps:
                loss, bad = meter.sync()
                if bad is not None:
                    raise _diverged(state, meter, bad, state_path)
                if on_step is not None:
                    on_step({"epoch": state.epoch + 1, "step": step + 1, "steps_per_epoch": steps,
                             "loss": loss})  # fmt: skip
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    clean = clean_accuracy(model, data.x[:CLEAN_ACC_EXAMPLES], data.y[:CLEAN_ACC_EXAMPLES])
    model.train()
    record: dict[str, Any] = {
        "epoch": state.epoch + 1,
        "step": state.step,
        "train_loss": meter.mean_loss(),
        "clean_acc": clean,
        "lr": learning_rate(config, state.step - 1, data.total_steps),
        "start_small": bool(config.start_small and state.epoch == 0),
        "examples": meter.seen,
        "examples_per_s": meter.seen / seconds if seconds > 0 else float("nan"),
        "seconds": seconds,
        "train_seconds": sum(m["seconds"] for m in state.metrics) + seconds,
        "device": describe_device(dev),
        **passes.per_example(meter.seen),
    }
    record.update(meter.per_attack(metric_names(config.families())))
    return record


def train_step(state: TrainingState, data: TrainingData, attacks: list[Attack],
               xb: torch.Tensor, yb: torch.Tensor) -> StepOutput:
    """One optimiser step on the batch ``xb`` ``[B, ...]``; returns the strategy's output."""
    for group in state.optimizer.param_groups:
        group["lr"] = learning_rate(state.config, state.step, data.total_steps)
    result = state.strategy(state.model, xb, yb, attacks, generator=state.gens.attack)
    state.optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    state.optimizer.step()
    state.step += 1
    return result


class EpochMeter:
    """An epoch's per-step metrics, accumulated on the device without waiting for it."""

    def __init__(self, steps: int, n_attacks: int, device: torch.device):
        # float64: the sum over an epoch of float32 losses keeps full precision
        self.losses = torch.zeros(steps, dtype=torch.float64, device=device)
        self.sizes: list[int] = []  # clean inputs per step (the last batch may be short)
        self.adv_correct = torch.zeros(n_attacks, dtype=torch.long, device=device)
        self.attacked = [0] * n_attacks
        self.synced = 0  # steps already read by the host

    @property
    def seen(self) -> int:
        return sum(self.sizes)

    def add(self, out: StepOutput) -> None:
        self.losses[len(self.sizes)] = out.loss.detach()
        self.sizes.append(out.n)
        self.adv_correct += out.adv_correct
        self.attacked = [a + b for a, b in zip(self.attacked, out.attacked, strict=True)]

    def sync(self) -> tuple[float, int | None]:
        """Read the steps since the last sync (one wait for the device): (their mean loss, the
        index of the first non-finite loss among them, or None)."""
        window = self.losses[self.synced : len(self.sizes)].cpu()
        start, self.synced = self.synced, len(self.sizes)
        bad = (~torch.isfinite(window)).nonzero()
        return float(window.mean()), (start + int(bad[0]) if len(bad) else None)

    def mean_loss(self) -> float:
        """The epoch's training loss per clean input."""
        sizes = torch.tensor(self.sizes, dtype=torch.float64)
        return float((self.losses[: len(self.sizes)].cpu() * sizes).sum() / max(self.seen, 1))

    def per_attack(self, names: list[str]) -> dict[str, float]:
        """Per training attack ``adv_acc/<family>``: robust accuracy on the inputs it attacked
        (nan if none), and ``attacked/<family>``: the fraction of the epoch's inputs it attacked
        (1 for single, avg and max; the draw frequency for random and eat)."""
        out = {}
        for name, correct, attacked in zip(names, self.adv_correct.tolist(), self.attacked, strict=True):
            out[name] = correct / attacked if attacked else float("nan")
            out[name.replace("adv_acc/", "attacked/", 1)] = attacked / max(self.seen, 1)
        return out


def _diverged(state: TrainingState, meter: EpochMeter, bad: int,
              state_path: Path) -> MpoError:
    last = (
        f"the last good state is {state_path} (after epoch {state.epoch})"
        if state.epoch > 0
        else "no epoch completed, so there is no saved state"
    )
    steps, taken = len(meter.losses), len(meter.sizes)
    return MpoError(
        f"training diverged: loss = {float(meter.losses[bad])} at epoch {state.epoch + 1}, "
        f"step {bad + 1} of {steps} (global step {state.step - taken + bad + 1}); {last}. "
        "Try a lower learning rate."
    )


def load_trained(
    path: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Load a ``checkpoint.pt`` (or ``state.pt``): (model in eval mode, its config, the payload)."""
    from jobs.external.load import fit_state_dict
    from jobs.finetune import build_trainable

    dev = resolve_device(device)
    payload = load_checkpoint(path, map_location=dev)
    config = make_train_config(payload["config"], source=f"{path} (embedded config)")
    model = build_trainable(config, dev)
    fit_state_dict(model, payload["state_dict"], source=f"{path} (the weights of its config's model)")
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
    "MpoError",
    "TrainResult",
    "build_optimizer",
    "clean_accuracy",
    "learning_rate",
    "load_trained",
    "resolve_device",
    "train",
    "training_attacks",
]
