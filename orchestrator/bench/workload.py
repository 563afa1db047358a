"""What the attack, peer and training figures run on: the sizes of the measurements
(``Settings``), and one MNIST CNN trained clean for a few steps with one test batch (``Bench``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Settings:
    """Sizes of the measurements (``quick`` keeps the whole bench under two minutes on 2 cores)."""

    quick: bool
    width: float  # MNIST CNN width multiplier
    batch: int
    k: int  # attack steps of the peer comparisons
    ks: tuple[int, ...]  # attack steps of the attack figures
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
    proj_steps: int  # timed training steps of each projection throughput
    proj_warmup: int
    proj_batch: int | None  # None: the recipe's batch size

    @classmethod
    def make(cls, *, quick: bool, device: torch.device) -> Settings:
        cuda = device.type == "cuda"
        if quick:
            return cls(quick=True, width=1.0 if cuda else 0.25, batch=100, k=10, ks=(10, 20),
                       reps=3, warmup=1, fit_steps=50, rt_grid=(3, 3, 5), rt_reps=2, train_k=5,
                       train_steps=4, train_reps=2, sweep_trials=2, sweep_reps=1,
                       sweep_warmup=False, sweep_parallel=False, eval_shards=2,
                       proj_steps=3 if cuda else 1, proj_warmup=1 if cuda else 0,
                       proj_batch=None if cuda else 2)
        return cls(quick=False, width=1.0 if cuda else 0.5, batch=500 if cuda else 100, k=20,
                   ks=(10, 20), reps=7, warmup=2, fit_steps=400, rt_grid=(5, 5, 31), rt_reps=2,
                   train_k=10, train_steps=10, train_reps=5, sweep_trials=8, sweep_reps=2,
                   sweep_warmup=True, sweep_parallel=True, eval_shards=8, proj_steps=20,
                   proj_warmup=2, proj_batch=None)


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


def lp_specs(k: int) -> dict[str, dict[str, Any]]:
    """MNIST budgets of the paper; evaluation step sizes (2.5 eps / k for l_inf and l_2)."""
    return {
        "pgd_linf": {"type": "linf", "epsilon": 0.3, "k": k},
        "pgd_l2": {"type": "l2", "epsilon": 2.0, "k": k},
        "slide": {"type": "l1", "epsilon": 10.0, "k": k, "a": 1.0, "perc": 99},
    }


def _synthetic_mnist(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable MNIST-shaped data: each class a bright block at its own place, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand((n, 1, 28, 28), generator=g) * 0.25
    for c in range(10):
        r, col = divmod(c, 5)
        x[y == c, :, 4 + 10 * r : 12 + 10 * r, 2 + 5 * col : 6 + 5 * col] = 0.9
    return x, y


def load_mnist(data_dir: str | None, n_train: int, n_test: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
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
