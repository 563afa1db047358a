"""Datasets: MNIST and CIFAR10 through torchvision, and the paper's Section 2 ``toy`` distribution.

Every loader returns whole tensors ``(x, y)``: ``x`` float32 ``[N, C, H, W]`` (images in [0, 1]),
``y`` int64 ``[N]``. The data root is, in order: the ``data_dir`` argument (CLI ``--data-dir``),
the ``MPO_DATA_DIR`` environment variable, then ``~/.cache/mpo/data``. Under the root the layout is
torchvision's own (``MNIST/raw/*-ubyte``, ``cifar-10-batches-py/``).

The ``toy`` data (Tramer & Boneh, Section 2, after Tsipras et al.):
y uniform in {-1, +1} (class 1 is y = +1, class 0 is y = -1); x0 = y with probability p0 else -y
(``x0="sign"``), or x0 ~ N(y, alpha^-2) (``x0="gaussian"``, Section 2.4); x1..xd iid N(y * eta, 1)
with eta = alpha / sqrt(d). The d + 1 features are laid out as a 1 x H x W grid, H = W =
ceil(sqrt(d + 1)), row-major: x0 at pixel [0, 0, 0], x1..xd after it, zero padding at the end.
The inputs are unbounded (no [0, 1] box).
"""

from __future__ import annotations

import math
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from jobs.datasets import (
    DEFAULT_DATA_DIR,
    ENV_DATA_DIR,
    DataError,
    DatasetInfo,
    Split,
    ToyParams,
    check_name,
    dataset_info,
    resolve_data_dir,
    toy_params,
)
from jobs.io import file_digest

__all__ = ["DATASETS", "DEFAULT_DATA_DIR", "ENV_DATA_DIR", "LOADERS", "DataError", "DatasetInfo",
           "Split", "ToyParams", "augment_batch", "check_dataset", "dataset_info", "fetch",
           "load_split", "require_dataset", "resolve_data_dir", "toy_params"]




# --------------------------------------------------------------------------------------------
# Data root


def _fix_hint(name: str, root: Path) -> str:
    return (
        f"Fix: point mpo at a folder that has them with --data-dir DIR or {ENV_DATA_DIR}=DIR, "
        f"or allow downloading with --download (or run `mpo data fetch {name} --data-dir {root}` "
        "on a machine with internet and copy the folder)."
    )


# --------------------------------------------------------------------------------------------
# MNIST

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_TYPES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def read_idx_header(path: Path) -> tuple[int, ...]:
    """Check an IDX file's header against its length; return its shape. Raises DataError."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES:
                raise DataError(
                    f"{path}: not an IDX file (bad magic number {head.hex() or 'empty'}); "
                    "the file is corrupt: delete it and download it again"
                )
            ndim = head[3]
            if not 1 <= ndim <= 3:
                raise DataError(f"{path}: corrupt IDX header ({ndim} dimensions, expected 1 to 3)")
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            shape = struct.unpack(f">{ndim}I", dims_raw)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    expected = 4 + 4 * ndim + math.prod(shape) * _IDX_TYPES[head[2]]
    if size != expected:
        raise DataError(
            f"{path}: truncated or corrupt IDX file: header says shape {tuple(shape)} "
            f"({expected} bytes) but the file has {size} bytes; delete it and download it again"
        )
    return tuple(shape)


def _mnist_raw(root: Path) -> Path:
    return root / "MNIST" / "raw"


def _load_mnist(root: Path, split: Split, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST

    raw = _mnist_raw(root)
    needed = [raw / f for f in MNIST_FILES[split]]
    if not all(p.exists() for p in needed):
        if download:
            _download("mnist", root)
        missing = [str(p) for p in needed if not p.exists()]
        if missing:
            raise DataError(
                f"MNIST {split} split not found under data root {root}: missing "
                + ", ".join(missing)
                + ". "
                + _fix_hint("mnist", root)
            )
    image_shape = read_idx_header(needed[0])
    label_shape = read_idx_header(needed[1])
    if len(image_shape) != 3 or image_shape[1:] != (28, 28):
        raise DataError(f"{needed[0]}: images of shape {image_shape}, expected (N, 28, 28)")
    if label_shape != image_shape[:1]:
        raise DataError(
            f"{raw}: {image_shape[0]} images but {label_shape[0]} labels in the {split} split; "
            "the files do not belong together"
        )
    try:
        ds = MNIST(str(root), train=(split == "train"), download=False)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise DataError(f"MNIST {split} under {root}: torchvision could not read it ({err})") from None
    x = ds.data.to(torch.float32).div_(255.0).unsqueeze(1)
    y = ds.targets.to(torch.int64)
    if y.min() < 0 or y.max() > 9:
        raise DataError(f"{needed[1]}: labels outside 0..9; the file is corrupt")
    return x, y


# --------------------------------------------------------------------------------------------
# CIFAR10

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}


def _load_cifar10(root: Path, split: Split, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR_FOLDER
    needed = [folder / f for f in (*CIFAR_FILES[split], "batches.meta")]
    if not all(p.exists() for p in needed):
        if download:
            _download("cifar10", root)
        missing = [str(p) for p in needed if not p.exists()]
        if missing:
            raise DataError(
                f"CIFAR10 {split} split not found under data root {root}: missing "
                + ", ".join(missing)
                + ". "
                + _fix_hint("cifar10", root)
            )
    try:
        ds = CIFAR10(str(root), train=(split == "train"), download=False)
    except RuntimeError as err:
        raise DataError(
            f"CIFAR10 {split} under {root}: files present but corrupt (checksum mismatch: {err}); "
            "delete the folder and download it again"
        ) from None
    except (EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError) as err:
        raise DataError(f"CIFAR10 {split} under {root}: truncated or corrupt file ({err!r})") from None
    data = torch.from_numpy(ds.data)  # [N, 32, 32, 3] uint8
    if data.shape[1:] != (32, 32, 3) or len(ds.targets) != data.shape[0]:
        raise DataError(f"CIFAR10 {split} under {root}: unexpected array shape {tuple(data.shape)}")
    x = data.permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)
    y = torch.as_tensor(ds.targets, dtype=torch.int64)
    return x, y


# --------------------------------------------------------------------------------------------
# Downloads


def _download(name: str, root: Path) -> None:
    """Download with torchvision under a file lock, so concurrent trials do not race."""
    from filelock import FileLock
    from torchvision.datasets import CIFAR10, MNIST

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".mpo-{name}.lock")):
        try:
            if name == "mnist":
                MNIST(str(root), train=True, download=True)
                MNIST(str(root), train=False, download=True)
            elif name == "cifar10":
                CIFAR10(str(root), train=True, download=True)
                CIFAR10(str(root), train=False, download=True)
            else:
                raise DataError(f"dataset '{name}' has nothing to download")
        except DataError:
            raise
        except Exception as err:  # network errors come in many types (URLError, OSError, ...)
            raise DataError(
                f"could not download {name} into {root}: {err}. This machine may have no internet; "
                f"copy the files there by hand or point --data-dir / {ENV_DATA_DIR} at a copy."
            ) from None


def fetch(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download a dataset into the data root (``mpo data fetch``)."""
    if LOADERS[check_name(name)] is None:
        raise DataError(f"dataset '{name}' is generated, there is nothing to fetch")
    root = resolve_data_dir(data_dir)
    _download(name, root)
    return root


# --------------------------------------------------------------------------------------------
# toy


def _toy_split(params: ToyParams, split: Split, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = params.n_train if split == "train" else params.n_test
    gen = torch.Generator().manual_seed(2 * int(seed) + (0 if split == "train" else 1))
    y_pm = torch.randint(0, 2, (n,), generator=gen).mul_(2).sub_(1).to(torch.float32)
    if params.x0 == "sign":
        agree = torch.rand(n, generator=gen) < params.p0
        x0 = torch.where(agree, y_pm, -y_pm)
    else:
        x0 = y_pm + torch.randn(n, generator=gen) / params.alpha
    feats = torch.randn(n, params.d, generator=gen) + params.eta * y_pm[:, None]
    side = params.side
    flat = torch.zeros(n, side * side)
    flat[:, 0] = x0
    flat[:, 1 : params.d + 1] = feats
    x = flat.view(n, 1, side, side)
    y = (y_pm > 0).to(torch.int64)
    return x, y


# --------------------------------------------------------------------------------------------
# Registry


#: Each dataset's loader (the toy data is generated: ``_toy_split``).
LOADERS: dict[str, Callable[[Path, Split, bool], tuple[torch.Tensor, torch.Tensor]] | None] = {
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "toy": None,
}
#: The dataset names (``jobs.datasets.DATASET_INFO`` describes each).
DATASETS = tuple(LOADERS)


def load_split(
    name: str,
    split: Split,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    n: int | None = None,
    seed: int = 0,
    params: dict[str, Any] | ToyParams | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split as tensors.

    ``n``: for ``test``, the first ``n`` points (the paper evaluates the first 1000); for ``train``,
    a subset of ``n`` points drawn with ``seed`` (deterministic). ``None`` = the whole split.
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown split '{split}'; valid splits: train, test")
    loader = LOADERS[check_name(name)]
    if loader is None:
        x, y = _toy_split(toy_params(params), split, seed)
    else:
        if params:
            raise DataError(f"dataset '{name}' takes no parameters, got {sorted(params)}")
        x, y = loader(resolve_data_dir(data_dir), split, download)
    if n is not None:
        if n < 1:
            raise DataError(f"n_{split} = {n}: must be at least 1")
        if n > len(x):
            raise DataError(
                f"n_{split} = {n} is larger than the {name} {split} split ({len(x)} points)"
            )
        if split == "train" and n < len(x):
            idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))[:n]
            idx, _ = idx.sort()
            x, y = x[idx], y[idx]
        else:
            x, y = x[:n], y[:n]
    return x.contiguous(), y.contiguous()


def require_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, n_train: int | None = None,
    n_test: int | None = None,
) -> None:
    """Check, before any work starts, that ``name``'s files are under the data root and hold at
    least ``n_train`` / ``n_test`` points; raises the ``DataError`` a trial would hit."""
    loader = LOADERS[check_name(name)]
    if loader is None:
        return
    root = resolve_data_dir(data_dir)
    for split, n in (("train", n_train), ("test", n_test)):
        _, y = loader(root, split, False)
        if n is not None and n > len(y):
            raise DataError(
                f"{name} {split} under {root} has {len(y)} points, fewer than the {n} asked for"
            )


def augment_batch(
    x: torch.Tensor, augmentation: str | None, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training augmentation on a batch ``[B, C, H, W]``: ``crop+flip`` is CIFAR10's random
    crop with 4-pixel zero padding and a horizontal flip with probability 1/2."""
    if augmentation is None:
        return x
    if augmentation != "crop+flip":
        raise DataError(f"unknown augmentation '{augmentation}'; valid: crop+flip")
    b, c, h, w = x.shape
    pad = 4
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dev = x.device
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gen_dev).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gen_dev).to(dev)
    flip = torch.rand(b, generator=generator, device=gen_dev).to(dev) < 0.5
    rows = oy[:, None] + torch.arange(h, device=dev)[None, :]  # [B, H]
    cols = ox[:, None] + torch.arange(w, device=dev)[None, :]  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    out = out.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    return out


# --------------------------------------------------------------------------------------------
# Checks (mpo data check)




def check_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What is present for a dataset under the data root: sizes and checksum status per split.

    Returns ``{"name", "root", "present", "splits": {split: {"size" or "error"}}, "checksums": str}``.
    """
    from torchvision.datasets import CIFAR10, MNIST

    root = resolve_data_dir(data_dir)
    out: dict[str, Any] = {"name": name, "root": str(root), "splits": {}, "checksums": ""}
    if LOADERS[check_name(name)] is None:
        out["present"] = True
        out["checksums"] = "generated from a seed"
        info = dataset_info(name)
        out["splits"] = {"train": {"size": info.train_size}, "test": {"size": info.test_size}}
        return out
    if name == "mnist":
        raw = _mnist_raw(root)
        for split in MNIST_FILES:
            try:
                _, y = _load_mnist(root, split, download=False)
                out["splits"][split] = {"size": len(y)}
            except DataError as err:
                out["splits"][split] = {"error": str(err)}
        verdicts = []
        for fname, md5 in MNIST.resources:
            gz = raw / fname
            if gz.exists():
                verdicts.append(f"{fname}: {'ok' if file_digest(gz, 'md5') == md5 else 'MISMATCH'}")
        out["checksums"] = (
            "; ".join(verdicts)
            if verdicts
            else "unverified: torchvision publishes md5s of the .gz archives, and none are present"
        )
    else:
        folder = root / CIFAR_FOLDER
        for split in ("train", "test"):
            try:
                _, y = _load_cifar10(root, split, download=False)
                out["splits"][split] = {"size": len(y)}
            except DataError as err:
                out["splits"][split] = {"error": str(err)}
        verdicts = []
        for fname, md5 in CIFAR10.train_list + CIFAR10.test_list:
            f = folder / fname
            if f.exists():
                verdicts.append(f"{fname}: {'ok' if file_digest(f, 'md5') == md5 else 'MISMATCH'}")
        out["checksums"] = "; ".join(verdicts) if verdicts else "no files"
    out["present"] = all("size" in s for s in out["splits"].values())
    return out
