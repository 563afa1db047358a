"""What each dataset is, torch-free: its shape, classes, input box and sizes, the toy
distribution's parameters, and the data root (the loaders are ``jobs.data``).

Configs, suites and grids are validated against these without importing torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from jobs.errors import MpoError
from jobs.validation import FrozenModel, format_validation_error

DEFAULT_DATA_DIR = Path("~/.cache/mpo/data")
ENV_DATA_DIR = "MPO_DATA_DIR"

Split = Literal["train", "test"]


class DataError(MpoError, RuntimeError):
    """A dataset that cannot be loaded: missing, corrupt, or asked for more points than it has."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: input shape ``(C, H, W)``, classes, input bounds (None = unbounded)."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    bounds: tuple[float, float] | None
    train_size: int | None
    test_size: int | None
    augmentation: str | None = None


class ToyParams(FrozenModel):
    """Parameters of the Section 2 distribution."""

    d: int = Field(99, ge=1, description="number of weakly correlated features x1..xd")
    alpha: float = Field(2.0, gt=0, description="signal strength: eta = alpha / sqrt(d)")
    p0: float = Field(0.9, ge=0.5, le=1.0, description="P(x0 = y) for the sign feature")
    x0: Literal["sign", "gaussian"] = "sign"
    n_train: int = Field(10_000, ge=1, description="size of the generated training split")
    n_test: int = Field(2_000, ge=1, description="size of the generated test split")

    @property
    def eta(self) -> float:
        return self.alpha / math.sqrt(self.d)

    @property
    def side(self) -> int:
        return math.ceil(math.sqrt(self.d + 1))


def toy_params(params: dict[str, Any] | ToyParams | None) -> ToyParams:
    if isinstance(params, ToyParams):
        return params
    try:
        return ToyParams(**(params or {}))
    except ValidationError as err:
        raise DataError(
            format_validation_error(err, source="toy dataset parameters", model=ToyParams)
        ) from None


# --------------------------------------------------------------------------------------------
# The datasets


def _mnist_info(_: ToyParams | None) -> DatasetInfo:
    return DatasetInfo("mnist", (1, 28, 28), 10, (0.0, 1.0), 60_000, 10_000)


def _cifar_info(_: ToyParams | None) -> DatasetInfo:
    return DatasetInfo("cifar10", (3, 32, 32), 10, (0.0, 1.0), 50_000, 10_000, "crop+flip")


def _toy_info(params: ToyParams | None) -> DatasetInfo:
    p = params or ToyParams()
    return DatasetInfo("toy", (1, p.side, p.side), 2, None, p.n_train, p.n_test)


#: Each dataset's description, by name (``jobs.data.LOADERS`` holds their loaders).
DATASET_INFO: dict[str, Callable[[ToyParams | None], DatasetInfo]] = {
    "mnist": _mnist_info,
    "cifar10": _cifar_info,
    "toy": _toy_info,
}


def check_name(name: str) -> str:
    """``name`` if it is a dataset mpo knows, else a ``DataError`` listing them."""
    if name not in DATASET_INFO:
        raise DataError(f"unknown dataset '{name}'; valid datasets: {', '.join(sorted(DATASET_INFO))}")
    return name


def dataset_info(name: str, params: dict[str, Any] | ToyParams | None = None) -> DatasetInfo:
    """Shape, classes and bounds of a dataset (``params`` only for ``toy``)."""
    return DATASET_INFO[check_name(name)](toy_params(params) if name == "toy" else None)


#: AutoAttack's standard version needs this many classes: its DLR losses read the
#: third and fourth largest logits (pyautoattack.checks.check_n_classes).
AUTOATTACK_MIN_CLASSES = 4


def check_auditable(name: str, *, field: str = "audit") -> None:
    """Refuse a strength audit (AutoAttack standard) of a dataset with too few classes."""
    n = dataset_info(name).num_classes
    if n < AUTOATTACK_MIN_CLASSES:
        raise DataError(f"{field}: dataset '{name}' has {n} classes; AutoAttack's standard "
                        f"version (the strength audit) needs at least {AUTOATTACK_MIN_CLASSES} "
                        "(its DLR losses use the 3rd and 4th largest logits); audit an "
                        "mnist or cifar10 run")


# --------------------------------------------------------------------------------------------
# Data root


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data root: argument, else ``$MPO_DATA_DIR``, else ``~/.cache/mpo/data``."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser()


