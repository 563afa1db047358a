"""Loading an external model: build or read it, wrap it (``InputScaling``), check its logits.

A factory's weights and RobustBench's checkpoints are read with ``torch.load(weights_only=True)``
only; the RobustBench loader itself is in ``jobs.external.robustbench``.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from jobs.checkpoint import _load_failure as load_failure
from jobs.data import dataset_info
from jobs.external.spec import ExternalModel, ExternalModelError
from jobs.io import file_digest

#: Where a checkpoint file commonly keeps its state dict, tried in this order.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")

# ----------------------------------------------------------------------------------------------
# The wrapper


class InputScaling(nn.Module):
    """[0, 1] inputs -> the model's scale and normalisation -> the model.

    ``x * (hi - lo) + lo`` maps [0, 1] onto ``input_range``; then ``(x - mean) / std`` per
    channel (both in the ``input_range`` scale) when given. Gradients flow through, so the
    attacks' steps and radii stay in [0, 1].
    """

    def __init__(self, model: nn.Module, *, input_range: tuple[float, float],
                 mean: list[float] | None, std: list[float] | None) -> None:
        super().__init__()
        self.model = model
        lo, hi = input_range
        self.identity_range = (lo, hi) == (0.0, 1.0)
        self.register_buffer("low", torch.tensor(float(lo)))
        self.register_buffer("span", torch.tensor(float(hi - lo)))
        self.normalise = mean is not None and std is not None
        self.register_buffer("mean", torch.tensor(mean or [0.0]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std or [1.0]).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if not self.identity_range:
            x = x * self.span + self.low
        if self.normalise:
            x = (x - self.mean) / self.std
        return self.model(x)


# ----------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class LoadedExternal:
    """An external model ready for the attacks: the wrapper in eval mode on its device."""

    spec: ExternalModel
    module: nn.Module
    model_id: str
    #: sha256 of the weights file (the TorchScript file, RobustBench's checkpoint files
    #: combined); '' for a factory without weights
    weights_digest: str
    label: str

    @property
    def record(self) -> dict[str, Any]:
        return self.spec.record(label=self.label, weights_digest=self.weights_digest)

    @property
    def identity(self) -> str:
        """sha256 of everything the outputs depend on (the id's parts and the RobustBench
        file's digest): what a results file's content key holds for the model."""
        body = {**self.spec.identity(self.weights_digest), "weights_digest": self.weights_digest}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def planned(spec: ExternalModel, *, label: str) -> tuple[str, dict[str, Any]]:
    """(model id, config-like record) without loading the model: only the weights file is
    read, for its digest (a RobustBench entry's digest is known once its loader has run)."""
    path = spec.weights_file()
    digest = _digest(path, spec) if path is not None else ""
    return spec.model_id(digest), spec.record(label=label, weights_digest=digest)


def load_external(spec: ExternalModel, *, device: torch.device, label: str | None = None,
                  download: bool = False) -> LoadedExternal:
    """Build or load the model, wrap it (``InputScaling``), move it to ``device``, check its
    outputs; ``download`` lets RobustBench fetch a checkpoint missing from ``model_dir``."""
    if spec.factory:
        model, digest = _from_factory(spec)
    elif spec.torchscript:
        model, digest = _from_torchscript(spec)
    else:
        from jobs.external.robustbench import load_robustbench

        model, digest = load_robustbench(spec, download=download)
    check_channels(spec)
    wrapped = InputScaling(model, input_range=spec.input_range, mean=spec.mean, std=spec.std)
    wrapped = wrapped.to(device).eval()
    check_logits(wrapped, spec, device)
    return LoadedExternal(spec, wrapped, spec.model_id(digest), digest,
                          label or spec.default_label())


def check_channels(spec: ExternalModel) -> None:
    """``mean`` and ``std`` have one value, or one per input channel of the dataset."""
    channels = dataset_info(spec.dataset).input_shape[0]
    if spec.mean is not None and len(spec.mean) not in (1, channels):
        raise ExternalModelError(
            f"{spec.kind} model {spec.source}: mean and std have {len(spec.mean)} values; "
            f"{spec.dataset} inputs have {channels} channel(s): give 1 or {channels}")


def _digest(path: Path, spec: ExternalModel) -> str:
    if not path.is_file():
        raise ExternalModelError(f"{spec.kind} model {spec.source}: file {path} does not exist")
    return file_digest(path)


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """The current directory on the import path while the factory's module is imported, as
    ``python -m`` has it (the ``mpo`` script's own folder is what Python puts there)."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def resolve_factory(path: str) -> Any:
    """The callable named ``package.module:attr.attr``; errors say which part is missing."""
    module_name, attr_path = path.split(":", 1)
    with _cwd_importable():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            raise ExternalModelError(
                f"factory {path}: cannot import module '{module_name}' ({err}); it must be "
                "installed or importable from the current directory"
            ) from None
        except Exception as err:  # the user's module failed while importing: say so, briefly
            raise ExternalModelError(f"factory {path}: importing module '{module_name}' failed: "
                                     f"{type(err).__name__}: {err}") from None
    obj: Any = module
    for i, part in enumerate(attr_path.split(".")):
        if not hasattr(obj, part):
            where = ".".join([module_name, *attr_path.split(".")[:i]])
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ExternalModelError(f"factory {path}: '{where}' has no attribute '{part}'{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ExternalModelError(f"factory {path}: not callable ({type(obj).__name__})")
    return obj


def _from_factory(spec: ExternalModel) -> tuple[nn.Module, str]:
    assert spec.factory is not None
    factory = resolve_factory(spec.factory)
    try:
        model = factory(**spec.factory_kwargs)
    except Exception as err:  # the user's code: one line that names it
        raise ExternalModelError(f"factory {spec.factory}({_kwargs_text(spec.factory_kwargs)}) "
                                 f"failed: {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ExternalModelError(f"factory {spec.factory} returned a {type(model).__name__}, "
                                 "not a torch.nn.Module")
    if spec.weights is None:
        return model, ""
    path = Path(spec.weights)
    digest = _digest(path, spec)
    fit_state_dict(model, read_state_dict(path), source=f"weights {path}")
    return model, digest


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from ``path`` (``torch.load(weights_only=True)``): the file's dict of
    tensors, or one held under a ``STATE_DICT_KEYS`` key; a ``module.`` prefix on every key
    (``nn.DataParallel``) is dropped."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors of many kinds
        raise ExternalModelError(f"weights {path}: {load_failure(err)}") from None
    state = _find_state_dict(payload)
    if state is None:
        keys = list(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise ExternalModelError(
            f"weights {path}: no state dict found (a dict of tensors, or one under "
            f"{', '.join(STATE_DICT_KEYS)}); the file holds {keys}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _find_state_dict(payload: object) -> dict[str, Tensor] | None:
    if not isinstance(payload, dict):
        return None
    if payload and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in payload.items()):
        return payload
    for key in STATE_DICT_KEYS:
        inner = payload.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, Tensor) for v in inner.values()):
            return inner
    return None


def _listing(names: list[str], limit: int = 5) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def fit_state_dict(model: nn.Module, state: Mapping[str, Tensor], *, source: str) -> None:
    """``model.load_state_dict(state)``, strictly; a mismatch names the missing and unexpected
    keys and the tensors of the wrong shape (a few of each)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs model {list(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {len(items)}: {_listing(items, 3 if label == 'wrong shape' else 5)}"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("wrong shape", shapes)) if items]
        raise ExternalModelError(f"{source} does not fit the model: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def _from_torchscript(spec: ExternalModel) -> tuple[nn.Module, str]:
    assert spec.torchscript is not None
    path = Path(spec.torchscript)
    digest = _digest(path, spec)
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # a zip that is not TorchScript, or not a zip at all
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
        raise ExternalModelError(
            f"TorchScript {path}: torch.jit.load cannot read it ({first[:300]}); an mpo "
            "checkpoint is evaluated as `mpo eval CHECKPOINT`, a state dict with --model "
            "package.module:factory --weights FILE"
        ) from None
    return model, digest


def check_logits(model: nn.Module, spec: ExternalModel, device: torch.device) -> None:
    """A forward pass on two [0, 1] inputs of the dataset's shape must give finite logits
    ``[2, num_classes]`` (probabilities are refused: the attacks' losses need logits)."""
    info = dataset_info(spec.dataset)
    x = torch.stack([torch.zeros(info.input_shape), torch.full(info.input_shape, 0.5)]).to(device)
    what = f"{spec.kind} model {spec.source}"
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:  # the user's forward: one line that names the input it got
        raise ExternalModelError(
            f"{what} fails on {spec.dataset} inputs of shape {list(x.shape)}: "
            f"{type(err).__name__}: {str(err)[:300]}"
        ) from None
    want = [2, info.num_classes]
    if not isinstance(out, Tensor) or list(out.shape) != want or not out.is_floating_point():
        got = (f"a tensor of shape {list(out.shape)} ({out.dtype})" if isinstance(out, Tensor)
               else f"a {type(out).__name__}")
        raise ExternalModelError(
            f"{what} must return logits of shape [batch, {info.num_classes}] for {spec.dataset} "
            f"({info.num_classes} classes); on a batch of 2 it returned {got}"
        )
    if not torch.isfinite(out).all():
        raise ExternalModelError(f"{what} returns non-finite logits on {spec.dataset} inputs")
    sums = out.double().sum(1)
    if (out >= 0).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        raise ExternalModelError(
            f"{what} returns probabilities (each row sums to 1); give it without its final "
            "softmax: the attacks' losses and the in-ball rule need logits"
        )
