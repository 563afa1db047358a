"""Models as someone else's code defines them, for the external-model tests (importable as
``tests.external_models`` in the test process and in the Ray workers)."""

from __future__ import annotations

import torch
from torch import nn


def small_cnn(width: int = 4) -> nn.Module:
    """A small MNIST CNN taking inputs in [0, 1]."""
    return nn.Sequential(
        nn.Conv2d(1, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(4),
        nn.Flatten(), nn.Linear(width * 7 * 7, 10),
    )


class Softmaxed(nn.Module):
    """A classifier that returns probabilities instead of logits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(1)


class Recorder(nn.Module):
    """Logits that depend on the inputs it is given, which it keeps (to check the wrapper)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.scale = nn.Parameter(torch.ones(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x.flatten(1)[:, :10] * self.scale


NOT_CALLABLE = 3


def mpo_mnist_small() -> nn.Module:
    """mpo's own quarter-width MNIST CNN, built by someone else's factory (a starting point
    whose weights fit ``mnist_cnn_small``)."""
    from jobs.datasets import dataset_info
    from jobs.models import build_model

    torch.manual_seed(1)
    return build_model("mnist_cnn_small", dataset_info("mnist"))
