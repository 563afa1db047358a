"""Datasets: real MNIST, generated IDX and CIFAR-format files through the real loaders, toy data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.data import (
    DataError,
    ToyParams,
    augment_batch,
    check_dataset,
    dataset_info,
    load_split,
    read_idx_header,
    resolve_data_dir,
)
from tests.conftest import make_fake_mnist, write_idx


def test_real_mnist_sizes_range_and_labels(real_mnist_dir):
    x, y = load_split("mnist", "train", data_dir=real_mnist_dir)
    assert x.shape == (14_262, 1, 28, 28) and y.shape == (14_262,)
    xt, yt = load_split("mnist", "test", data_dir=real_mnist_dir)
    assert xt.shape == (10_000, 1, 28, 28)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    counts = torch.bincount(yt, minlength=10)
    # published MNIST test label counts
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(y, minlength=10).min() > 1000


def test_real_mnist_check_reports_sizes(real_mnist_dir):
    res = check_dataset("mnist", real_mnist_dir)
    assert res["present"]
    assert res["splits"] == {"train": {"size": 14_262}, "test": {"size": 10_000}}


def test_generated_idx_through_real_loader(tmp_path):
    root = make_fake_mnist(tmp_path, n_train=50, n_test=30)
    x, y = load_split("mnist", "train", data_dir=root)
    assert x.shape == (50, 1, 28, 28) and y.shape == (50,)
    xt, yt = load_split("mnist", "test", data_dir=root, n=10)
    assert xt.shape == (10, 1, 28, 28) and yt.shape == (10,)
    # the first n test points, in order
    xall, _ = load_split("mnist", "test", data_dir=root)
    assert torch.equal(xt, xall[:10])


def test_train_subset_is_deterministic(tmp_path):
    root = make_fake_mnist(tmp_path, n_train=80, n_test=10)
    a, _ = load_split("mnist", "train", data_dir=root, n=20, seed=3)
    b, _ = load_split("mnist", "train", data_dir=root, n=20, seed=3)
    c, _ = load_split("mnist", "train", data_dir=root, n=20, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MPO_DATA_DIR", raising=False)
    assert resolve_data_dir(None) == Path("~/.cache/mpo/data").expanduser()
    monkeypatch.setenv("MPO_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir(tmp_path / "x") == tmp_path / "x"


def _fail_download(*args, **kwargs):
    raise OSError("no network in this test")


def test_missing_offline_names_root_files_and_fix(tmp_path):
    with pytest.raises(DataError, match=r"not found under data root .*train-images-idx3-ubyte.*--data-dir.*MPO_DATA_DIR.*mpo data fetch"):
        load_split("mnist", "train", data_dir=tmp_path)


def test_missing_with_failing_download_is_clear(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tvm

    monkeypatch.setattr(tvm.MNIST, "download", _fail_download)
    with pytest.raises(DataError, match="could not download mnist"):
        load_split("mnist", "test", data_dir=tmp_path, download=True)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b"\x00\x00\x99\x03" + b[4:], "not an IDX file"),
        (lambda b: b[: len(b) - 100], "truncated or corrupt IDX"),
        (lambda b: b[:6], "truncated IDX header"),
    ],
    ids=["bad-magic", "truncated-body", "truncated-header"],
)
def test_corrupt_idx_raises(tmp_path, mutate, match):
    root = make_fake_mnist(tmp_path, n_train=20, n_test=20)
    f = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    f.write_bytes(mutate(f.read_bytes()))
    with pytest.raises(DataError, match=match):
        load_split("mnist", "test", data_dir=root)


def test_label_image_count_mismatch(tmp_path):
    root = make_fake_mnist(tmp_path, n_train=20, n_test=20)
    write_idx(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(19, np.uint8))
    with pytest.raises(DataError, match="20 images but 19 labels"):
        load_split("mnist", "test", data_dir=root)


def test_idx_header_reader(tmp_path):
    write_idx(tmp_path / "a", np.zeros((3, 4, 5), np.uint8))
    assert read_idx_header(tmp_path / "a") == (3, 4, 5)


def _write_cifar(root: Path, n: int = 12) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        with (folder / name).open("wb") as f:
            pickle.dump(entry, f)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root


@pytest.fixture
def no_published_checksum(monkeypatch):
    """Tiny CIFAR-format files cannot match the published md5s: stub only that check."""
    import torchvision.datasets.cifar as tvc

    monkeypatch.setattr(tvc, "check_integrity", lambda *args, **kwargs: True)


def test_cifar_format_through_real_loader(tmp_path, no_published_checksum):
    root = _write_cifar(tmp_path)
    x, y = load_split("cifar10", "train", data_dir=root)
    assert x.shape == (60, 3, 32, 32) and y.shape == (60,)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    xt, _ = load_split("cifar10", "test", data_dir=root, n=5)
    assert xt.shape == (5, 3, 32, 32)
    # channel layout: pixel (0, 0) of image 0 is the first of each 1024-value plane
    with (root / "cifar-10-batches-py" / "test_batch").open("rb") as f:
        raw = pickle.load(f)["data"][0]
    assert torch.allclose(xt[0, :, 0, 0] * 255, torch.tensor(raw[[0, 1024, 2048]], dtype=torch.float32))


def test_cifar_checksum_mismatch_is_corrupt(tmp_path):
    root = _write_cifar(tmp_path)
    with pytest.raises(DataError, match="corrupt"):
        load_split("cifar10", "test", data_dir=root)


def test_cifar_truncated_file(tmp_path, no_published_checksum):
    root = _write_cifar(tmp_path)
    f = root / "cifar-10-batches-py" / "test_batch"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_split("cifar10", "test", data_dir=root)


def test_cifar_augmentation_crops_and_flips():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = augment_batch(x, "crop+flip", generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert augment_batch(x, None) is x
    # every output is a (possibly flipped) shifted window of the zero-padded input
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for b in range(2):
        found = False
        for dy in range(9):
            for dx in range(9):
                win = padded[b, :, dy : dy + 32, dx : dx + 32]
                if torch.equal(win, out[b]) or torch.equal(win.flip(-1), out[b]):
                    found = True
        assert found


def test_toy_same_seed_same_data():
    a = load_split("toy", "train", seed=5)
    b = load_split("toy", "train", seed=5)
    c = load_split("toy", "train", seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(load_split("toy", "test", seed=5)[0][:10], a[0][:10])


def test_toy_layout_and_statistics():
    p = ToyParams(d=99, alpha=2.0, p0=0.9, n_train=20_000)
    info = dataset_info("toy", p)
    assert info.input_shape == (1, 10, 10) and info.bounds is None and info.num_classes == 2
    x, y = load_split("toy", "train", params=p, seed=0)
    flat = x.flatten(1)
    ypm = y.float() * 2 - 1
    # x0 at pixel [0, 0, 0] agrees with y w.p. p0
    agree = (flat[:, 0] == ypm).float().mean()
    se = (0.9 * 0.1 / len(y)) ** 0.5
    assert abs(float(agree) - 0.9) < 4 * se
    # features x1..xd have class-conditional mean y * eta and unit variance
    feats = flat[:, 1:100] * ypm[:, None]
    assert abs(float(feats.mean()) - p.eta) < 4 / (len(y) * 99) ** 0.5
    assert abs(float(feats.std()) - 1.0) < 0.02
    assert torch.all(flat[:, 100:] == 0)  # zero padding
    assert abs(float(y.float().mean()) - 0.5) < 0.02


def test_toy_gaussian_x0():
    p = ToyParams(x0="gaussian", alpha=2.0, n_train=20_000)
    x, y = load_split("toy", "train", params=p)
    x0 = x.flatten(1)[:, 0] * (y.float() * 2 - 1)
    assert abs(float(x0.mean()) - 1.0) < 0.02
    assert abs(float(x0.std()) - 0.5) < 0.02


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: load_split("imagenet", "test"), r"unknown dataset 'imagenet'; valid datasets: cifar10, mnist, toy"),
        (lambda: load_split("toy", "test", n=10**6), r"n_test = 1000000 is larger than the toy test split \(2000 points\)"),
        (lambda: load_split("toy", "val"), "unknown split 'val'"),
        (lambda: load_split("toy", "test", params={"p0": 0.3}), r"field 'p0' = 0.3"),
        (lambda: load_split("toy", "test", params={"d": 0}), r"field 'd' = 0"),
        (lambda: load_split("toy", "test", params={"dd": 3}), r"field 'dd'"),
        (lambda: augment_batch(torch.zeros(1, 1, 4, 4), "mixup"), "unknown augmentation 'mixup'"),
    ],
    ids=["unknown-dataset", "n-too-large", "bad-split", "p0", "d", "typo", "augmentation"],
)
def test_bad_input_errors(call, match):
    with pytest.raises(DataError, match=match):
        call()


def test_n_test_too_large_for_mnist(tmp_path):
    root = make_fake_mnist(tmp_path, n_train=20, n_test=20)
    with pytest.raises(DataError, match=r"n_test = 21 is larger than the mnist test split \(20 points\)"):
        load_split("mnist", "test", data_dir=root, n=21)
