"""Rotation-translation: the transform, the 775-transform grid, random mode, affine linf+rt."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jobs.attacks import make_attack, rt_grid, rt_transform

T = torch.tensor


class Counting(nn.Module):
    """Wraps a model and counts the images and the forward passes it sees."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.images = 0
        self.calls = 0

    def forward(self, x):
        self.images += x.shape[0]
        self.calls += 1
        return self.inner(x)


class PixelDetector(nn.Module):
    """Class 1 only when pixel (r, c) is lit at (almost) full intensity; class 0 otherwise."""

    def __init__(self, r: int, c: int):
        super().__init__()
        self.r, self.c = r, c

    def forward(self, x):
        z = 100.0 * (x[:, 0, self.r, self.c] - 0.995)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def test_transform_conventions():
    x = torch.rand(2, 1, 6, 6)
    ident = rt_transform(x, torch.zeros(2, 3))
    assert torch.allclose(ident, x, atol=1e-6)
    # positive angle: counter-clockwise as displayed (rot90 over (H, W))
    assert torch.allclose(rt_transform(x, T([[0, 0, 90.0]] * 2)), torch.rot90(x, 1, (-2, -1)), atol=1e-5)
    # integer translation: content moves right by tx and down by ty, zero fill
    shifted = torch.zeros_like(x)
    shifted[..., 0:5, 2:] = x[..., 1:6, :4]
    assert torch.allclose(rt_transform(x, T([[2, -1, 0.0]] * 2)), shifted, atol=1e-5)


def test_cifar_sized_inputs_are_padded_and_cropped():
    x = torch.rand(2, 3, 32, 32)
    t = T([[1.3, -2.2, 17.0], [3, 3, -30.0]])
    out = rt_transform(x, t)  # pad 16, transform, crop 32
    assert out.shape == x.shape
    # with zero fill, padding changes no pixel (up to coordinate rounding)
    assert torch.allclose(out, rt_transform(x, t, pad=0), atol=1e-5)


def test_default_grid_has_775_transforms_and_all_are_scored_in_batches():
    attack = make_attack({"type": "rt"}, eval_batch=512)
    grid = attack.grid()
    assert grid.shape == (775, 3) and attack.total_steps == 775
    assert sorted(set(grid[:, 0].tolist())) == [-3.0, -1.5, 0.0, 1.5, 3.0]
    assert len(set(grid[:, 2].tolist())) == 31 and grid[:, 2].abs().max() == 30
    assert torch.unique(grid, dim=0).shape[0] == 775
    model = Counting(PixelDetector(5, 5))
    x = torch.zeros(3, 1, 28, 28)
    attack(model, x, torch.zeros(3, dtype=torch.long))
    assert model.images == 3 * 775
    assert model.calls == -(-3 * 775 // 512)  # many transforms per forward pass


def test_model_fooled_by_one_translation_is_fooled_and_the_transform_is_reported():
    x = torch.zeros(4, 1, 28, 28)
    x[:, 0, 5, 5] = 1.0  # a lit pixel; the model fires when it sits 3 px to the right
    x[1, 0, 5, 5] = 0.0  # ... except for an input without the pixel, which cannot be fooled
    y = torch.zeros(4, dtype=torch.long)
    r = make_attack({"type": "rt"})(PixelDetector(5, 8), x, y)
    assert r.success.tolist() == [True, False, True, True]
    assert torch.allclose(r.transform[r.success], T([[3.0, 0.0, 0.0]] * 3), atol=1e-6)
    assert torch.allclose(r.norm[r.success], torch.ones(3))
    assert torch.allclose(r.x_adv[0, 0, 5, 8], T(1.0), atol=1e-5)


def test_random_mode_is_seeded_and_within_limits():
    model = PixelDetector(5, 8)
    x = torch.rand(5, 1, 28, 28)
    y = torch.zeros(5, dtype=torch.long)
    spec = {"type": "rt", "random_tries": 7, "spatial_limits": [2, 1, 10]}
    attack = make_attack(spec)
    assert attack.total_steps == 7
    counting = Counting(model)
    r1 = attack(counting, x, y, generator=torch.Generator().manual_seed(4))
    assert counting.images == 5 * 7
    r2 = attack(model, x, y, generator=torch.Generator().manual_seed(4))
    r3 = attack(model, x, y, generator=torch.Generator().manual_seed(5))
    assert torch.equal(r1.transform, r2.transform) and torch.equal(r1.x_adv, r2.x_adv)
    assert not torch.equal(r1.transform, r3.transform)
    assert (r1.transform.abs() <= T([2.0, 1.0, 10.0])).all()


def test_rt_grid_handles_single_point_axes():
    g = rt_grid((3.0, 3.0, 30.0), (1, 3, 1))
    assert g.tolist() == [[0.0, -3.0, 0.0], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0]]


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_affine_linf_rt_scales_both_parts(weight):
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    x = torch.rand(6, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (6,), generator=gen)
    spec = {"type": "affine", "weight": weight,
            "attacks": [{"type": "linf", "epsilon": 0.2, "k": 3}, {"type": "rt", "random_tries": 3}]}
    r = make_attack(spec)(model, x, y, generator=gen)
    lim = T([3.0, 3.0, 30.0]) * (1 - weight)
    assert (r.transform.abs() <= lim + 1e-6).all()
    base = rt_transform(x, r.transform).clamp(0, 1)
    assert ((r.x_adv - base).abs().flatten(1).amax(1) <= 0.2 * weight + 1e-6).all()
    assert (r.norm <= 1 + 1e-5).all()


@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (3, 3, 32, 32)])
def test_transform_all_equals_per_pair_transforms(shape):
    from jobs.attacks.spatial import rt_transform_all

    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    ts = rt_grid((3, 3, 30), (3, 2, 5))
    b = shape[0]
    p = torch.arange(ts.shape[0] * b)
    assert torch.equal(rt_transform_all(x, ts), rt_transform(x[p % b], ts[p // b]))


@pytest.mark.parametrize("eval_batch", [1, 2, 7, 64, 4096])
def test_worst_transform_does_not_depend_on_the_chunk_size(eval_batch):
    """Chunks of whole transforms, or of inputs when the batch alone exceeds the chunk."""
    from jobs.attacks.spatial import worst_transform

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 4))
    x = torch.rand(6, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    ts = rt_grid((3, 3, 30), (3, 3, 3))
    ref, ref_t = worst_transform(model, x, y, ts, bounds=(0.0, 1.0), eval_batch=10**6)
    got, got_t = worst_transform(model, x, y, ts, bounds=(0.0, 1.0), eval_batch=eval_batch)
    assert torch.equal(got_t, ref_t) and torch.equal(got.x, ref.x)
    assert torch.allclose(got.loss, ref.loss, rtol=1e-6)  # (BLAS rounding depends on the batch)
    counting = Counting(model)
    worst_transform(counting, x, y, ts, bounds=(0.0, 1.0), eval_batch=eval_batch)
    assert counting.images == 6 * 27


def test_default_eval_batch_is_chosen_per_device():
    from jobs.attacks.spatial import DEFAULT_EVAL_BATCH, EVAL_BATCH_BY_DEVICE, resolve_eval_batch

    assert isinstance(DEFAULT_EVAL_BATCH, int) and DEFAULT_EVAL_BATCH >= 1
    assert resolve_eval_batch(DEFAULT_EVAL_BATCH, "cpu") == EVAL_BATCH_BY_DEVICE["cpu"] == 256
    assert resolve_eval_batch(DEFAULT_EVAL_BATCH, torch.device("cuda", 0)) == 2048
    assert resolve_eval_batch(2048, "cpu") == 2048  # an explicit size is kept
    model = Counting(PixelDetector(5, 5))
    make_attack({"type": "rt"})(model, torch.zeros(100, 1, 28, 28), torch.zeros(100, dtype=torch.long))
    assert model.calls == -(-775 // 2)  # 256-image chunks: 2 transforms of 100 inputs each
