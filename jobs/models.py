"""Models, resolved from names through a registry. All take inputs in the dataset's own scale
(normalisation, where any, is inside the model) and return logits ``[B, num_classes]``.

``build_model`` puts the convolutional models' weights in the channels-last layout (``LAYOUTS``):
their convolutions then compute in NHWC whatever the input's layout, which ``mpo bench`` (its
``exec/channels_last_*`` figures) measures faster on the development CPU for the attack passes
and the training updates of both CNNs. The layout changes the kernels, so float rounding, never
the function; a checkpoint loads into either layout. ``set_execution`` runs a model in bf16 or
TF32 autocast, or compiled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from jobs.datasets import DatasetInfo
from jobs.errors import ConfigError
from jobs.model_names import MODEL_NAMES


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the first layer, so attacks work in input scale."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MadryMNIST(nn.Module):
    """Madry et al.'s MNIST CNN: conv5x5-32, pool, conv5x5-64, pool, fc-1024, fc-10.

    ``width`` multiplies every layer's width (1.0 = the paper's model, 3,274,634 parameters).
    Each ReLU comes after its max-pool: the two commute (both are monotone, and a window whose
    maximum is not positive gives 0 and no gradient either way), so outputs and gradients are
    those of conv-ReLU-pool, while the ReLU and its backward run on a quarter of the activations.
    The parameter names are those of conv-ReLU-pool (the ReLU has none), so checkpoints load.
    """

    def __init__(self, info: DatasetInfo, *, width: float = 1.0) -> None:
        super().__init__()
        c, h, w = info.input_shape
        if h % 4 or w % 4:
            raise ConfigError(f"mnist_cnn needs H and W divisible by 4, got input shape {info.input_shape}")
        c1, c2, f = max(1, round(32 * width)), max(1, round(64 * width)), max(1, round(1024 * width))
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 5, padding=2),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.MaxPool2d(2),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * (h // 4) * (w // 4), f),
            nn.ReLU(),
            nn.Linear(f, info.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _WideBlock(nn.Module):
    """Pre-activation residual unit (BN-ReLU-conv3x3, BN-ReLU-conv3x3), as in Madry et al.'s WRN."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = (
            None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(torch.relu(self.bn2(o)))
        return o + short


class WideResNet(nn.Module):
    """The CIFAR10 wide ResNet of Madry et al.: filters 16 / 16k / 32k / 64k (k = ``widen``,
    10 in the paper: 16/160/320/640) and ``(depth - 2) / 6`` residual units per stage (depth 32:
    5 units, the paper's model)."""

    def __init__(self, info: DatasetInfo, *, depth: int = 32, widen: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"wrn depth = {depth}: must be 6n + 2 with n >= 1 (8, 14, 20, 26, 32, ...)")
        if widen < 1:
            raise ConfigError(f"wrn widen = {widen}: must be at least 1")
        n = (depth - 2) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        c = info.input_shape[0]
        layers: list[nn.Module] = []
        if info.bounds is not None and c == 3:
            layers.append(Normalize((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)))
        layers.append(nn.Conv2d(c, widths[0], 3, padding=1, bias=False))
        cin = widths[0]
        for stage, cout in enumerate(widths[1:]):
            for unit in range(n):
                layers.append(_WideBlock(cin, cout, 2 if (stage > 0 and unit == 0) else 1))
                cin = cout
        layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, info.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class Linear(nn.Module):
    """A linear classifier on the flattened input (the classifiers of the paper's Section 2)."""

    def __init__(self, info: DatasetInfo) -> None:
        super().__init__()
        c, h, w = info.input_shape
        self.fc = nn.Linear(c * h * w, info.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class MLP(nn.Module):
    """A small fully connected network (ReLU hidden layers)."""

    def __init__(self, info: DatasetInfo, *, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        if hidden < 1 or layers < 1:
            raise ConfigError(f"mlp hidden = {hidden}, layers = {layers}: both must be at least 1")
        c, h, w = info.input_shape
        mods: list[nn.Module] = [nn.Flatten()]
        width = c * h * w
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        mods.append(nn.Linear(width, info.num_classes))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


#: name -> (constructor, default keyword arguments, description)
_BUILDERS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    "mnist_cnn": (MadryMNIST, {"width": 1.0}),
    "mnist_cnn_small": (MadryMNIST, {"width": 0.25}),
    "wrn": (WideResNet, {"depth": 32, "widen": 10}),
    "wrn_small": (WideResNet, {"depth": 8, "widen": 1}),
    "linear": (Linear, {}),
    "mlp": (MLP, {"hidden": 64, "layers": 2}),
}
#: name -> (module class, default kwargs, description); the names are ``jobs.model_names``'s
MODELS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any], str]] = {
    name: (*_BUILDERS[name], text) for name, text in MODEL_NAMES.items()
}


#: memory layouts of ``build_model``: name -> torch memory format of the 4-d (convolution) weights
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def build_model(name: str, info: DatasetInfo, *, layout: str = "channels_last", **kwargs: Any) -> nn.Module:
    """Build a registered model for a dataset; ``kwargs`` override the registry defaults.

    ``layout`` (``LAYOUTS``): the memory layout of the convolution weights (models without
    convolutions are the same in both)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout '{layout}': valid layouts: {', '.join(LAYOUTS)}")
    try:
        ctor, defaults, _ = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model '{name}'; valid models: {', '.join(sorted(MODELS))}") from None
    params = {**defaults, **kwargs}
    try:
        model = ctor(info, **params)
    except TypeError as err:
        allowed = ", ".join(sorted(defaults)) or "none"
        raise ConfigError(f"model '{name}': bad arguments {sorted(kwargs)} ({err}); allowed: {allowed}") from None
    return model.to(memory_format=LAYOUTS[layout])


#: how a model's forward pass computes (``set_execution``): ``fp32`` as built; ``bf16`` under
#: autocast to bfloat16 (convolutions and matmuls in bf16, the logits handed back in float32);
#: ``tf32`` TF32 matmuls and convolutions on CUDA (plain fp32 on other devices)
PRECISIONS = ("fp32", "bf16", "tf32")


class _Precision:
    """A model's forward pass run in a reduced precision: the callable ``set_execution`` puts in
    place of ``model.forward`` (the module, its parameter names and its hooks stay as they are)."""

    def __init__(self, forward: Callable[..., torch.Tensor], precision: str) -> None:
        self.forward, self.precision = forward, precision

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.precision == "bf16":
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                out = self.forward(x, *args, **kwargs)
            return out.float()
        if x.device.type != "cuda":
            return self.forward(x, *args, **kwargs)
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            return self.forward(x, *args, **kwargs)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def set_execution(model: nn.Module, *, precision: str = "fp32", compile: bool = False) -> nn.Module:
    """Run ``model`` in ``precision`` (``PRECISIONS``) and, with ``compile``, compiled by
    ``torch.compile``; in place (the state dict, parameter names and hooks are unchanged, so
    checkpoints and ``jobs.train_cost.PassCounter`` work as before). Returns ``model``.

    Inputs, gradients and logits stay float32 in every precision: attacks and the training loss
    see the same types. Compilation happens at the first call of each input shape (seconds to
    minutes)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision '{precision}': valid precisions: {', '.join(PRECISIONS)}")
    if precision != "fp32":
        model.forward = _Precision(model.forward, precision)
    if compile:
        model.compile()
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
