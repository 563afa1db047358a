"""Rotation-translation (RT): the batched transform and the grid / random-search attack.

Transform convention (per image): rotate about the image centre by ``angle`` degrees
(positive = counter-clockwise as displayed), bilinear, then translate by (tx, ty) pixels
(positive tx moves the content right, positive ty moves it down); pixels from outside are 0.
CIFAR-sized inputs (32x32) are zero-padded by 16 px, transformed and centre-cropped, as the
paper's code does. (With zero fill this gives the same pixels as transforming unpadded; the
padding is kept so the behaviour matches the reference exactly, borders included.)

The attack scores many (input, transform) pairs per forward pass: pairs are laid out
transform-major and sent through the model in chunks of ``eval_batch`` images.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.attacks.base import Attack, AttackConstraintError, Best, Bounds, RunOutput

if TYPE_CHECKING:
    from jobs.attacks.spatial.spec import RTSpec

#: Images per forward pass when scoring transforms (no gradient is kept), per device type:
#: on CPU small chunks keep the activations in cache (on a 2-core CPU, 2048-image chunks of the
#: MNIST CNN ran ~2x slower per image than 256-image ones); GPUs want large batches.
EVAL_BATCH_BY_DEVICE = {"cpu": 256, "cuda": 2048}


class _PerDeviceEvalBatch(int):
    """The default ``eval_batch``: an int (2048, the GPU size) for code that validates or does
    arithmetic with it; where a chunk size is chosen it stands for the device's size."""

    def __repr__(self) -> str:
        return f"DEFAULT_EVAL_BATCH(per device: {EVAL_BATCH_BY_DEVICE})"


DEFAULT_EVAL_BATCH: int = _PerDeviceEvalBatch(2048)


def resolve_eval_batch(eval_batch: int, device: torch.device | str) -> int:
    """Images per forward pass on ``device``: the device's size for DEFAULT_EVAL_BATCH, else
    ``eval_batch`` as given."""
    if isinstance(eval_batch, _PerDeviceEvalBatch):
        return EVAL_BATCH_BY_DEVICE.get(torch.device(device).type, int(eval_batch))
    return int(eval_batch)


def pad_for(shape: torch.Size | tuple[int, ...]) -> int:
    """Padding the paper uses before transforming: 16 px for 32x32 (CIFAR-sized) inputs."""
    return 16 if tuple(shape[-2:]) == (32, 32) else 0


def _grids(transform: Tensor, size: list[int], like: Tensor) -> Tensor:
    """[N, 3] (tx, ty, deg) -> sampling grids [N, H, W, 2] for images of ``size`` [N, C, H, W]."""
    h, w = size[-2:]
    t = transform.to(device=like.device, dtype=like.dtype)
    theta = t[:, 2] * (math.pi / 180.0)
    c, s = theta.cos(), theta.sin()
    sx, sy = w / 2.0, h / 2.0
    tx, ty = t[:, 0], t[:, 1]
    # affine_grid maps output to input coordinates (normalised). In pixel units about the centre,
    # input = R^-1 (output - t) with R^-1 = [[c, -s], [s, c]]; convert with S = diag(sx, sy).
    row0 = torch.stack([c, -s * sy / sx, -(c * tx - s * ty) / sx], dim=1)
    row1 = torch.stack([s * sx / sy, c, -(s * tx + c * ty) / sy], dim=1)
    mat = torch.stack([row0, row1], dim=1)
    return F.affine_grid(mat, size, align_corners=False)


def _sample(x: Tensor, grid: Tensor) -> Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rt_transform(x: Tensor, transform: Tensor, *, pad: int | None = None) -> Tensor:
    """Rotate then translate each image: x [N, C, H, W], transform [N, 3] (tx, ty, deg) -> [N, C, H, W]."""
    if pad is None:
        pad = pad_for(x.shape)
    h0, w0 = x.shape[-2:]
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
    out = _sample(x, _grids(transform, list(x.shape), x))
    if pad:
        out = out[..., pad : pad + h0, pad : pad + w0]
    return out


def rt_transform_all(x: Tensor, transforms: Tensor, *, pad: int | None = None) -> Tensor:
    """Every transform applied to every image: x [B, C, H, W], transforms [T, 3] ->
    [T * B, C, H, W], transform-major (row t * B + i is image i under transform t).

    The same pixels as ``rt_transform(x[i], transforms[t])`` for each pair, but one sampling grid
    per transform (not per pair) and no gather of x: the batch is folded into the channels, so
    each grid resamples all B images at once.
    """
    if pad is None:
        pad = pad_for(x.shape)
    h0, w0 = x.shape[-2:]
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
    b, ch, h, w = x.shape
    n = transforms.shape[0]
    grid = _grids(transforms, [n, b * ch, h, w], x)
    folded = x.reshape(1, b * ch, h, w).expand(n, b * ch, h, w)
    out = _sample(folded, grid).reshape(n * b, ch, h, w)
    if pad:
        out = out[..., pad : pad + h0, pad : pad + w0]
    return out


def rt_grid(limits: tuple[float, float, float], granularity: tuple[int, int, int], *,
            device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """All grid transforms [gx*gy*ga, 3] (tx, ty, deg): linspace(-lim, lim, g) per axis."""
    axes = [torch.linspace(-lim, lim, g, device=device, dtype=dtype) if g > 1
            else torch.zeros(1, device=device, dtype=dtype) for lim, g in zip(limits, granularity, strict=True)]
    tx, ty, ang = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([tx.reshape(-1), ty.reshape(-1), ang.reshape(-1)], dim=1)


def rt_fraction(transform: Tensor, limits: tuple[float, float, float]) -> Tensor:
    """[B, 3] -> [B]: max_i |t_i| / limit_i (a zero limit allows only 0: then |t_i| / 0 = inf)."""
    lim = torch.tensor(limits, device=transform.device, dtype=transform.dtype)
    frac = torch.where(lim > 0, transform.abs() / lim.clamp_min(1e-30),
                       torch.where(transform == 0, 0.0, float("inf")))
    return frac.amax(1)


def random_transforms(n: int, tries: int, limits: tuple[float, float, float], *,
                      generator: torch.Generator | None, device: torch.device | str | None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """[n, tries, 3] uniform transforms in [-limit, limit] per axis."""
    u = torch.rand((n, tries, 3), generator=generator, device=device, dtype=dtype)
    lim = torch.tensor(limits, device=device, dtype=dtype)
    return (2 * u - 1) * lim


def _score_shared(model: nn.Module, x: Tensor, y: Tensor, transforms: Tensor, bounds: Bounds,
                  chunk: int) -> tuple[Tensor, Tensor]:
    """(loss, pred) [T, B] of transforms [T, 3] applied to every input: whole transforms per
    chunk (inputs split only when B alone exceeds the chunk)."""
    b, t_count = x.shape[0], transforms.shape[0]
    loss = torch.empty(t_count, b, device=x.device, dtype=x.dtype)
    pred = torch.empty(t_count, b, device=x.device, dtype=torch.long)
    per = max(1, chunk // b)
    for t0 in range(0, t_count, per):
        ts = transforms[t0 : t0 + per]
        for b0 in range(0, b, chunk):
            xb, yb = x[b0 : b0 + chunk], y[b0 : b0 + chunk]
            xt = rt_transform_all(xb, ts)
            if bounds is not None:
                xt = xt.clamp(*bounds)
            logits = model(xt)
            shape = (ts.shape[0], xb.shape[0])
            loss[t0 : t0 + per, b0 : b0 + chunk] = F.cross_entropy(
                logits, yb.repeat(ts.shape[0]), reduction="none").view(shape)
            pred[t0 : t0 + per, b0 : b0 + chunk] = logits.argmax(1).view(shape)
    return loss, pred


def _score_per_input(model: nn.Module, x: Tensor, y: Tensor, transforms: Tensor, bounds: Bounds,
                     chunk: int) -> tuple[Tensor, Tensor]:
    """(loss, pred) [T, B] of per-input transforms [B, T, 3], pairs laid out transform-major."""
    b, t_count = x.shape[0], transforms.shape[1]
    total = b * t_count
    loss = torch.empty(total, device=x.device, dtype=x.dtype)
    pred = torch.empty(total, device=x.device, dtype=torch.long)
    for start in range(0, total, chunk):
        p = torch.arange(start, min(start + chunk, total), device=x.device)
        bi, ti = p % b, p // b
        xt = rt_transform(x[bi], transforms[bi, ti])
        if bounds is not None:
            xt = xt.clamp(*bounds)
        logits = model(xt)
        loss[start : start + p.numel()] = F.cross_entropy(logits, y[bi], reduction="none")
        pred[start : start + p.numel()] = logits.argmax(1)
    return loss.view(t_count, b), pred.view(t_count, b)


def score_transforms(model: nn.Module, x: Tensor, y: Tensor, transforms: Tensor, *, bounds: Bounds,
                     eval_batch: int = DEFAULT_EVAL_BATCH) -> tuple[Tensor, Tensor]:
    """(cross-entropy, prediction) [T, B] of each input under each transform, without gradients:
    transforms [T, 3] (the same for every input) or [B, T, 3] (per input)."""
    score = _score_shared if transforms.dim() == 2 else _score_per_input
    with torch.no_grad():
        return score(model, x, y, transforms, bounds, resolve_eval_batch(eval_batch, x.device))


def worst_transform(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    transforms: Tensor,
    *,
    bounds: Bounds,
    eval_batch: int = DEFAULT_EVAL_BATCH,
    stop_when_fooled: bool = False,
) -> tuple[Best, Tensor]:
    """Score every (input, transform) pair; keep the worst per input (``stop_when_fooled``:
    each input's first fooling transform, ``_first_fooling``).

    x [B, ...], y [B]; transforms [T, 3] (the same for every input) or [B, T, 3] (per input).
    ``eval_batch``: images per forward pass (DEFAULT_EVAL_BATCH: the device's size, see
    EVAL_BATCH_BY_DEVICE). Returns (Best over the pairs, chosen transform [B, 3]).
    """
    if stop_when_fooled:
        return _first_fooling(model, x, y, transforms, bounds, eval_batch)
    loss, pred = score_transforms(model, x, y, transforms, bounds=bounds, eval_batch=eval_batch)
    succ = pred != y[None]
    # Per input: the highest-loss misclassified transform if any, else the highest loss.
    masked = torch.where(succ, loss, torch.full_like(loss, float("-inf")))
    pick = torch.where(succ.any(0), masked.argmax(0), loss.argmax(0))
    cols = torch.arange(x.shape[0], device=x.device)
    return _kept(x, transforms, pick, bounds, loss[pick, cols], pred[pick, cols], succ[pick, cols])


def _kept(x: Tensor, transforms: Tensor, pick: Tensor, bounds: Bounds, loss: Tensor, pred: Tensor,
          fooled: Tensor) -> tuple[Best, Tensor]:
    """The picked transform of each input ([B] indices into the grid), applied and recorded."""
    shared = transforms.dim() == 2
    chosen = transforms[pick] if shared else transforms[torch.arange(x.shape[0], device=x.device), pick]
    x_adv = rt_transform(x, chosen)
    if bounds is not None:
        x_adv = x_adv.clamp(*bounds)
    best = Best(x_adv)
    best.offer(x_adv, loss, pred, fooled)
    return best, chosen


def _first_fooling(model: nn.Module, x: Tensor, y: Tensor, transforms: Tensor, bounds: Bounds,
                   eval_batch: int) -> tuple[Best, Tensor]:
    """``worst_transform`` stopping each input at the first transform (in order) that fools
    it: the transforms are scored in blocks of about ``eval_batch`` images over the inputs still
    robust. The same inputs are fooled as by ``worst_transform``; a fooled input's transform is
    its first fooling one, a robust input's the one of highest loss (as there)."""
    shared = transforms.dim() == 2
    n, t_count = x.shape[0], transforms.shape[0] if shared else transforms.shape[1]
    chunk = resolve_eval_batch(eval_batch, x.device)
    best_loss = torch.full((n,), float("-inf"), device=x.device, dtype=x.dtype)
    best_pred = torch.zeros(n, dtype=torch.long, device=x.device)
    pick = torch.zeros(n, dtype=torch.long, device=x.device)
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    t0 = 0
    while t0 < t_count and not bool(fooled.all()):
        alive = (~fooled).nonzero().squeeze(1)
        t1 = min(t_count, t0 + max(1, chunk // alive.numel()))
        block = transforms[t0:t1] if shared else transforms[alive, t0:t1]
        loss, pred = score_transforms(model, x[alive], y[alive], block, bounds=bounds,
                                      eval_batch=eval_batch)  # [T', A]
        succ = pred != y[alive][None]
        hit = succ.any(0)
        # per input: its first fooling transform of the block, else the block's highest loss
        at = torch.where(hit, succ.int().argmax(0), loss.argmax(0))
        cols = torch.arange(alive.numel(), device=x.device)
        cand_loss, cand_pred = loss[at, cols], pred[at, cols]
        take = hit | (cand_loss > best_loss[alive])
        rows = alive[take]
        best_loss[rows], best_pred[rows] = cand_loss[take], cand_pred[take]
        pick[rows] = t0 + at[take]
        fooled[alive[hit]] = True
        t0 = t1
    return _kept(x, transforms, pick, bounds, best_loss, best_pred, fooled)


class RTAttack(Attack):
    """Worst rotation-translation over the full grid, or over ``random_tries`` random draws
    (``stop_when_fooled``: an input's first fooling transform)."""

    family = "rt"
    epsilon = float("nan")
    can_stop = True

    def __init__(self, spec: RTSpec, *, bounds: Bounds = (0.0, 1.0), eval_batch: int = DEFAULT_EVAL_BATCH):
        self._spec = spec
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        self.spec = spec.to_dict()
        self.eval_batch = eval_batch
        g = spec.grid_granularity
        self.total_steps = g[0] * g[1] * g[2] if spec.grid_mode else spec.random_tries

    def grid(self, *, device: torch.device | str | None = None,
             dtype: torch.dtype = torch.float32) -> Tensor:
        """The grid transforms [T, 3] this attack enumerates in grid mode."""
        return rt_grid(self._spec.spatial_limits, self._spec.grid_granularity, device=device, dtype=dtype)

    def transforms_for(self, n: int, *, generator: torch.Generator | None, device: torch.device,
                       dtype: torch.dtype) -> Tensor:
        """[T, 3] (grid mode) or [n, tries, 3] (random mode) candidate transforms."""
        s = self._spec
        if s.grid_mode:
            return self.grid(device=device, dtype=dtype)
        return random_transforms(n, s.random_tries, s.spatial_limits, generator=generator,
                                 device=device, dtype=dtype)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> RunOutput:
        ts = self.transforms_for(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
        best, chosen = worst_transform(model, x, y, ts, bounds=self.bounds, eval_batch=self.eval_batch,
                                       stop_when_fooled=self.stop_when_fooled)
        return RunOutput(x_adv=best.x, loss=best.loss, pred=best.pred, transform=chosen)

    def _budget(self) -> float:
        return 1.0

    def _measure(self, x: Tensor, x_adv: Tensor, transform: Tensor | None) -> Tensor:
        assert transform is not None
        expect = rt_transform(x, transform)
        if self.bounds is not None:
            expect = expect.clamp(*self.bounds)
        if not torch.allclose(expect, x_adv, atol=1e-5, rtol=0):
            raise AttackConstraintError(f"{self!r}: x_adv is not the reported transform of x")
        return rt_fraction(transform, self._spec.spatial_limits)
