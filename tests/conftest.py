"""Shared fixtures: data roots (real MNIST when present, else generated), a small trained MNIST
model, and one local Ray cluster for the whole test run."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

#: The development machines' real MNIST (a user's clone has none): ../shared/data, or the folder
#: MPO_TEST_SHARED_DATA names (set it to a missing folder to run the tests as a user's clone does)
SHARED_DATA = Path(os.environ.get("MPO_TEST_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")
REAL_MNIST = SHARED_DATA / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
#: The fixtures that read MNIST: real when present, else generated (marker ``mnist``).
MNIST_FIXTURES = {"mnist_dir", "mnist_model", "real_mnist_dir"}


def pytest_collection_modifyitems(items) -> None:
    """Mark every test that uses MNIST (``-m mnist`` selects them: CI runs them again with the
    shared data hidden, as a user's clone has none)."""
    for item in items:
        if MNIST_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.mnist)


def write_idx(path: Path, array) -> None:
    """Write a uint8 numpy array as an IDX file (MNIST's format)."""
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(bytes([0, 0, 0x08, array.ndim]))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


def make_fake_mnist(root: Path, *, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """MNIST-format files of rendered digits: each label's digit in PIL's default font at a
    random size, position, stroke and rotation, on a dark background with faint noise.

    Like real MNIST, a small CNN learns it (about 96% clean accuracy after the ``mnist_model``
    fixture's 120 steps) without becoming robust: PGD at l_inf 0.3, SLIDE at l_1 10 and PGD at
    l_2 2 fool most of it, so the attack tests mean the same with or without ../shared/data.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = {size: ImageFont.load_default(size=size) for size in range(16, 25)}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.empty((n, 28, 28), dtype=np.uint8)
        for i, lab in enumerate(labels):
            img = Image.new("L", (28, 28), 0)
            xy = (14 + rng.uniform(-2.5, 2.5), 14 + rng.uniform(-2.5, 2.5))
            ImageDraw.Draw(img).text(xy, str(int(lab)), fill=255, anchor="mm",
                                     font=fonts[int(rng.integers(16, 25))],
                                     stroke_width=int(rng.integers(0, 2)), stroke_fill=255)
            img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
            noisy = np.asarray(img, dtype=np.float64) + rng.normal(0.0, 8.0, (28, 28))
            images[i] = np.clip(noisy, 0, 255).astype(np.uint8)
        write_idx(root / "MNIST" / "raw" / f"{split}-images-idx3-ubyte", images)
        write_idx(root / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def real_mnist_dir() -> Path:
    """The real MNIST data root (../shared/data); skips when absent."""
    if not REAL_MNIST.exists():
        pytest.skip(f"real MNIST not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """A data root with MNIST: the real one when present, else generated MNIST-format files."""
    if REAL_MNIST.exists():
        return SHARED_DATA
    return make_fake_mnist(tmp_path_factory.mktemp("fake-mnist"), n_train=6000, n_test=1000)


@pytest.fixture(scope="session")
def mnist_model(mnist_dir):
    """(model in eval mode, x_test [256,1,28,28], y_test [256]): a small CNN trained for a few
    hundred steps on the CPU (clean accuracy > 0.9 on real MNIST and on the generated digits)."""
    import torch

    from jobs.data import dataset_info, load_split
    from jobs.models import build_model

    torch.manual_seed(0)
    x, y = load_split("mnist", "train", data_dir=mnist_dir, n=6000)
    xt, yt = load_split("mnist", "test", data_dir=mnist_dir, n=256)
    model = build_model("mnist_cnn", dataset_info("mnist"), width=0.25)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _epoch in range(2):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 100):
            idx = perm[i : i + 100]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, xt, yt


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for the whole test run; shut down at the end."""
    import ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
