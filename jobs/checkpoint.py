"""Checkpoint files: weights, the full config that produced them, and a format version.

Loading uses ``torch.load(..., weights_only=True)``: nothing but tensors and plain containers is
ever unpickled. The config travels as a JSON string inside the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jobs.errors import MpoError
from jobs.io import atomic_write

FORMAT_VERSION = 1


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write with ``torch.save`` to a temporary file in the same folder, then rename."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | dict[str, torch.Tensor],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save weights + config (+ ``extra``: tensors, numbers, strings, lists, dicts) atomically."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    payload = {
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "config_json": json.dumps(config, sort_keys=True),
        "extra": extra or {},
    }
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint: ``{"format_version", "state_dict", "config", "extra"}``."""
    path = Path(path)
    if not path.exists():
        raise MpoError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling errors of many kinds
        raise MpoError(f"{path}: not a readable mpo checkpoint ({_load_failure(err)})") from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise MpoError(f"{path}: not an mpo checkpoint (no format_version)")
    version = payload["format_version"]
    if version != FORMAT_VERSION:
        raise MpoError(
            f"{path}: checkpoint format version {version}, this mpo reads version {FORMAT_VERSION}; "
            "load it with the mpo version that wrote it, or retrain"
        )
    try:
        config = json.loads(payload["config_json"])
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise MpoError(f"{path}: its embedded config is not JSON ({err}); the checkpoint is "
                       "damaged: train it again, or use the training folder's state.pt") from None
    if not isinstance(payload.get("state_dict"), dict):
        raise MpoError(f"{path}: it holds no weights (state_dict); the checkpoint is damaged")
    return {
        "format_version": version,
        "state_dict": payload["state_dict"],
        "config": config,
        "extra": payload.get("extra", {}),
    }


def _load_failure(err: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` refused a file."""
    text = str(err)
    if "Weights only load failed" in text:
        return ("torch.load(weights_only=True) refused it: not a torch file, or it holds objects "
                "other than tensors and plain containers, which mpo never unpickles")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return f"torch.load(weights_only=True) could not read it: {first[:300]}"


