"""Models and checkpoints."""

from __future__ import annotations

import pytest
import torch

from jobs.checkpoint import (
    FORMAT_VERSION,
    MpoError,
    load_checkpoint,
    save_checkpoint,
)
from jobs.data import dataset_info
from jobs.io import file_digest
from jobs.models import MODELS, ConfigError, build_model, count_parameters

SMALL = {"mnist_cnn": {"width": 0.125}, "wrn": {"depth": 8, "widen": 1}}


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "toy"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shapes(name, dataset):
    info = dataset_info(dataset)
    if name.startswith("mnist_cnn") and dataset == "toy":
        with pytest.raises(ConfigError, match="divisible by 4"):
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
    with pytest.raises(ConfigError, match=r"unknown model 'resnet'; valid models: linear, mlp, mnist_cnn"):
        build_model("resnet", dataset_info("mnist"))


def test_bad_model_arguments():
    with pytest.raises(ConfigError, match=r"bad arguments \['depthh'\]"):
        build_model("wrn", dataset_info("cifar10"), depthh=3)
    with pytest.raises(ConfigError, match="wrn depth = 9"):
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
    with pytest.raises(MpoError, match=f"format version {FORMAT_VERSION + 1}"):
        load_checkpoint(tmp_path / "c.pt")


class Evil:
    """An arbitrary object: loading must refuse to build it."""


def test_checkpoint_never_unpickles_objects(tmp_path):
    torch.save({"format_version": FORMAT_VERSION, "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(MpoError, match="not a readable mpo checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_cnns_are_channels_last_and_the_layout_changes_no_function():
    info = dataset_info("cifar10")
    torch.manual_seed(0)
    fast = build_model("wrn", info, **SMALL["wrn"])
    plain = build_model("wrn", info, layout="contiguous", **SMALL["wrn"])
    conv = fast.body[1].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.body[1].weight.is_contiguous()
    plain.load_state_dict(fast.state_dict())  # checkpoints load across layouts
    fast.eval(), plain.eval()
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    out_fast, out_plain = fast(x), plain(x)
    assert torch.allclose(out_fast, out_plain, atol=1e-5)
    (g_fast,) = torch.autograd.grad(out_fast.sum(), x)
    (g_plain,) = torch.autograd.grad(out_plain.sum(), x)
    assert torch.allclose(g_fast, g_plain, atol=1e-5)
    with pytest.raises(ConfigError, match="layout 'nhwc'"):
        build_model("wrn", info, layout="nhwc")


def test_mnist_cnn_pooling_before_relu_is_conv_relu_pool():
    """Max-pool and ReLU commute: the same logits and input gradients as Madry et al.'s order,
    ties and all-negative windows included."""
    from torch import nn

    torch.manual_seed(0)
    model = build_model("mnist_cnn", dataset_info("mnist"), width=0.25, layout="contiguous").eval()
    f = model.features
    madry = nn.Sequential(f[0], nn.ReLU(), nn.MaxPool2d(2), f[3], nn.ReLU(), nn.MaxPool2d(2),
                          model.classifier)
    x = torch.rand(8, 1, 28, 28)
    x[0] = 0.0  # all-zero input: many windows without a positive value
    x = x.requires_grad_(True)
    out, ref = model(x), madry(x)
    assert torch.equal(out, ref)
    y = torch.arange(8) % 10
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y), x)
    (g_ref,) = torch.autograd.grad(torch.nn.functional.cross_entropy(ref, y), x)
    assert torch.equal(g, g_ref)


def test_set_execution_keeps_the_state_dict_and_refuses_unknown_precisions():
    from jobs.models import set_execution

    info = dataset_info("mnist")
    torch.manual_seed(0)
    model = build_model("mnist_cnn", info, width=0.125).eval()
    keys = list(model.state_dict())
    x = torch.rand(4, 1, 28, 28)
    ref = model(x)
    set_execution(model, precision="bf16")
    out = model(x)
    assert out.dtype == torch.float32 and list(model.state_dict()) == keys
    assert torch.allclose(out, ref, atol=0.05) and not torch.equal(out, ref)
    set_execution(model, precision="tf32")  # TF32 is CUDA's: the CPU runs the pass as before
    with pytest.raises(ConfigError, match="precision 'fp16'"):
        set_execution(model, precision="fp16")


@pytest.mark.slow  # compiling the forward and backward passes takes about 30 s on 2 cores
def test_compiled_model_gives_the_same_logits_and_input_gradients():
    from jobs.attacks.base import input_grad
    from jobs.models import set_execution

    info = dataset_info("mnist")
    torch.manual_seed(0)
    model = build_model("mnist_cnn", info, width=0.125).eval()
    compiled = build_model("mnist_cnn", info, width=0.125).eval()
    compiled.load_state_dict(model.state_dict())
    set_execution(compiled, compile=True)
    assert list(compiled.state_dict()) == list(model.state_dict())
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6)
    g, logits = input_grad(model, x, y)
    g_c, logits_c = input_grad(compiled, x, y)
    assert torch.allclose(logits_c, logits, atol=1e-5) and torch.allclose(g_c, g, atol=1e-5)
