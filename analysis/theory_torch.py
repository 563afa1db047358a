"""A trained toy model as a classifier of the Section 2 theory (the one theory module with torch).

``checkpoint_classifier(path)`` loads a checkpoint trained on the ``toy`` dataset and returns it as
``X [n, d+1] -> labels in {-1, +1}`` together with the distribution it was trained on, ready for
``analysis.theory_mc.mc_risks``. Nothing else in ``analysis`` imports this module, so reports and
``mpo theory`` run without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from analysis.theory import MpoError, Section2
from analysis.theory_mc import Classifier
from jobs.checkpoint import load_checkpoint
from jobs.data import dataset_info
from jobs.models import build_model


def features_to_grid(X: np.ndarray, side: int) -> np.ndarray:
    """X [n, d+1] -> [n, 1, side, side]: the toy layout (x0 at [0, 0, 0], row-major, zero padding)."""
    n, width = X.shape
    if width > side * side:
        raise MpoError(f"{width} features do not fit a {side}x{side} grid")
    flat = np.zeros((n, side * side), dtype=np.float32)
    flat[:, :width] = X
    return flat.reshape(n, 1, side, side)


def torch_classifier(
    model: nn.Module, dist: Section2, *, device: str = "cpu", batch: int = 8192
) -> Classifier:
    """Wrap a torch model on the toy grid (logits [B, 2], class 1 <-> y = +1) as X -> {-1, +1}."""
    side = math.ceil(math.sqrt(dist.d + 1))
    model = model.to(device).eval()

    def f(X: np.ndarray) -> np.ndarray:
        grid = features_to_grid(X, side)
        out = []
        with torch.no_grad():
            for i in range(0, grid.shape[0], batch):
                logits = model(torch.from_numpy(grid[i : i + batch]).to(device))
                out.append(logits.argmax(dim=1).cpu().numpy())
        return np.concatenate(out) * 2 - 1

    return f


def checkpoint_classifier(
    path: str | Path,
    *,
    model_name: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> tuple[Classifier, Section2]:
    """Load a trained toy checkpoint as a classifier; returns (f, the distribution it was trained on).

    The model name, its keyword arguments and the toy parameters come from the checkpoint's config
    (a ``TrainConfig``: ``model.name``, ``model.kwargs``, ``dataset.params``) unless given here.
    """
    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    spec = cfg.get("model")
    if isinstance(spec, Mapping):  # TrainConfig: {"model": {"name", "kwargs"}}
        kwargs = dict(spec.get("kwargs") or {})
        spec = spec.get("name")
    else:
        kwargs = dict(cfg.get("model_kwargs") or {})
    name = model_name or spec
    if not name:
        raise MpoError(f"checkpoint {path}: no model name in its config; pass model_name=")
    if model_kwargs is not None:
        kwargs = dict(model_kwargs)
    data = cfg.get("dataset") if isinstance(cfg.get("dataset"), Mapping) else {}
    if data.get("name", "toy") != "toy":
        raise MpoError(
            f"checkpoint {path}: dataset = {data['name']!r}; the theory needs a 'toy' model"
        )
    if params is None:
        params = data.get("params") or cfg.get("dataset_params") or {}
    dist = Section2.from_params(params)
    toy = {"d": dist.d, "alpha": dist.alpha, "p0": dist.p0, "x0": dist.x0}
    model = build_model(name, dataset_info("toy", toy), **kwargs)
    model.load_state_dict(ckpt["state_dict"])
    return torch_classifier(model, dist, device=device), dist
