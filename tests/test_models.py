"""Models and checkpoints."""

from __future__ import annotations

import pytest
import torch

from jobs.checkpoint import (
    FORMAT_VERSION,
    CheckpointFormatError,
    file_digest,
    load_checkpoint,
    save_checkpoint,
)
from jobs.data import dataset_info
from jobs.models import MODELS, ModelError, build_model, count_parameters

SMALL = {"mnist_cnn": {"width": 0.125}, "wrn": {"depth": 8, "widen": 1}}


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "toy"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shapes(name, dataset):
    info = dataset_info(dataset)
    if name.startswith("mnist_cnn") and dataset == "toy":
        with pytest.raises(ModelError, match="divisible by 4"):
            build_model(name, info)
        return
    model = build_model(name, info, **SMALL.get(name, {}))
    out = model(torch.rand(3, *info.input_shape))
    assert out.shape == (3, info.num_classes)


def test_mnist_cnn_parameter_count():
    model = build_model("mnist_cnn", dataset_info("mnist"))
    assert count_parameters(model) == 3_274_634  # conv 832 + 51,264, fc 3,212,288 + 10,250


def test_wrn_is_madry_size():
    # WRN-32-10 (filters 16/160/320/640, 5 units per stage) has about 46.2M parameters
    model = build_model("wrn", dataset_info("cifar10"))
    assert 46_000_000 < count_parameters(model) < 46_300_000


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError, match=r"unknown model 'resnet'; valid models: linear, mlp, mnist_cnn"):
        build_model("resnet", dataset_info("mnist"))


def test_bad_model_arguments():
    with pytest.raises(ModelError, match=r"bad arguments \['depthh'\]"):
        build_model("wrn", dataset_info("cifar10"), depthh=3)
    with pytest.raises(ModelError, match="wrn depth = 9"):
        build_model("wrn", dataset_info("cifar10"), depth=9)


def test_checkpoint_round_trip(tmp_path):
    info = dataset_info("mnist")
    model = build_model("mnist_cnn_small", info)
    config = {"model": {"name": "mnist_cnn_small"}, "seed": 3}
    path = save_checkpoint(tmp_path / "c.pt", model=model, config=config, extra={"epoch": 2})
    ckpt = load_checkpoint(path)
    assert ckpt["config"] == config and ckpt["extra"] == {"epoch": 2}
    other = build_model("mnist_cnn_small", info)
    other.load_state_dict(ckpt["state_dict"])
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model(x), other(x))
    assert len(file_digest(path)) == 64
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary file


def test_checkpoint_of_other_version_is_refused(tmp_path):
    torch.save({"format_version": FORMAT_VERSION + 1, "state_dict": {}, "config_json": "{}"}, tmp_path / "c.pt")
    with pytest.raises(CheckpointFormatError, match=f"format version {FORMAT_VERSION + 1}"):
        load_checkpoint(tmp_path / "c.pt")


class Evil:
    """An arbitrary object: loading must refuse to build it."""


def test_checkpoint_never_unpickles_objects(tmp_path):
    torch.save({"format_version": FORMAT_VERSION, "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointFormatError, match="not a readable mpo checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
