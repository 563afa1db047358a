"""Models mpo did not train: a PyTorch factory, a TorchScript file, or a RobustBench zoo entry.

An ``ExternalModel`` says where the model comes from and how it reads its inputs:

- ``factory: "package.module:function"`` (``factory_kwargs`` passed to it) builds an
  ``nn.Module``; ``weights`` (optional) is a file that ``torch.load(..., weights_only=True)``
  reads: a state dict, or a dict holding one under a common key (``state_dict``, ``model``, ...).
  The current directory is on the import path, as for ``python -m``;
- ``torchscript: FILE`` is read by ``torch.jit.load`` (its weights are inside);
- ``robustbench: NAME`` with ``threat_model: Linf | L2`` loads through the optional
  ``robustbench`` package (``pip install 'mpo[robustbench]'``) from ``model_dir`` in its layout
  (``DIR/cifar10/Linf/NAME.pt``), with its ``torch.load`` forced to ``weights_only=True``.

mpo's attacks work on inputs in [0, 1], where the suites' radii are stated. ``input_range``
(``[0, 1]`` or e.g. ``[0, 255]``) is the scale the model expects and ``mean``/``std`` its
per-channel normalisation in that scale: both go inside a wrapper (``InputScaling``), so the
model the attacks see takes [0, 1] inputs and an l_inf radius of 8/255 means 8/255 of the range.
Before any attack, a forward pass on two inputs checks the outputs are logits ``[2, classes]``.

Identity: the model id hashes the source (factory path and kwargs; the zoo name, threat model
and dataset), the weights' sha256 (a RobustBench entry names one published checkpoint, so its
file's digest is recorded but not part of the id) and the wrapper settings, never a path: the
same model has the same id on every machine. ``record`` is the config-like snapshot that
results metadata and ``manifest.json`` carry (``strategy: external``).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import json
import os
import re
import sys
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError, field_validator, model_validator
from torch import Tensor, nn

from jobs.checkpoint import file_digest
from jobs.data import dataset_info
from jobs.errors import MpoError
from jobs.validation import FrozenModel, format_validation_error

#: The strategy name of every external model in results and manifests.
EXTERNAL_STRATEGY = "external"
#: Where a checkpoint file commonly keeps its state dict, tried in this order.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")
#: The extra that installs the RobustBench loader.
ROBUSTBENCH_EXTRA = "mpo[robustbench]"

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class ExternalModelError(MpoError, ValueError):
    """An external model that cannot be loaded or does not fit the dataset; names the model."""


class MissingExtraError(MpoError, ImportError):
    """An optional package that this model needs is not installed; names the extra."""


class ExternalModel(FrozenModel):
    """Where an evaluation-only model comes from and how its inputs are scaled."""

    factory: str | None = Field(None, description="package.module:callable returning an nn.Module")
    torchscript: str | None = Field(None, description="a TorchScript file (torch.jit.load)")
    robustbench: str | None = Field(None, description="a RobustBench model zoo name")
    dataset: Literal["mnist", "cifar10"]
    weights: str | None = Field(None, description="state dict file for the factory's module")
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    threat_model: Literal["Linf", "L2"] | None = Field(None, description="RobustBench threat model")
    model_dir: str | None = Field(None, description="RobustBench model folder (default ./models)")
    input_range: tuple[float, float] = Field((0.0, 1.0), description="the scale the model expects")
    mean: list[float] | None = Field(None, description="per-channel mean, in the input_range scale")
    std: list[float] | None = Field(None, description="per-channel std, in the input_range scale")

    @field_validator("factory")
    @classmethod
    def _factory_path(cls, value: str | None) -> str | None:
        if value is not None and not _FACTORY_RE.match(value):
            raise ValueError("must be 'package.module:callable' (e.g. mymodels.cifar:build)")
        return value

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(s > 0 for s in value):
            raise ValueError("every std must be > 0")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ExternalModel:
        given = [k for k in ("factory", "torchscript", "robustbench") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of factory, torchscript, robustbench; got "
                             + (", ".join(given) or "none"))
        rb = self.robustbench is not None
        for key, allowed in (("weights", self.factory is not None),
                             ("factory_kwargs", self.factory is not None),
                             ("threat_model", rb), ("model_dir", rb)):
            if getattr(self, key) and not allowed:
                raise ValueError(f"'{key}' does not apply to a {given[0]} model")
        if rb and self.threat_model is None:
            raise ValueError("a robustbench model needs threat_model: Linf or L2")
        if rb and (self.mean or self.std or tuple(self.input_range) != (0.0, 1.0)):
            raise ValueError("RobustBench models take [0, 1] inputs and normalise inside: "
                             "give no input_range, mean or std")
        lo, hi = self.input_range
        if not hi > lo:
            raise ValueError(f"input_range {list(self.input_range)}: the upper end must be above "
                             "the lower (e.g. [0, 1] or [0, 255])")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together")
        channels = dataset_info(self.dataset).input_shape[0]
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) not in (1, channels):
                raise ValueError(f"{key} has {len(value)} values; {self.dataset} inputs have "
                                 f"{channels} channel(s): give 1 or {channels}")
        return self

    @property
    def kind(self) -> str:
        return "factory" if self.factory else "torchscript" if self.torchscript else "robustbench"

    @property
    def source(self) -> str:
        """The model's name where it comes from: the factory path, the TorchScript file's
        name, or the zoo name."""
        if self.factory:
            return self.factory
        if self.torchscript:
            return Path(self.torchscript).name
        return str(self.robustbench)

    def default_label(self) -> str:
        """The factory's name, the TorchScript file's stem, or the zoo name."""
        if self.factory:
            return self.factory.rsplit(":", 1)[1].rsplit(".", 1)[-1]
        if self.torchscript:
            return Path(self.torchscript).stem
        return str(self.robustbench)

    def weights_file(self) -> Path | None:
        """The file whose digest identifies the weights (None: a factory without weights, or a
        RobustBench entry, whose file is read by the loader)."""
        if self.factory:
            return Path(self.weights) if self.weights else None
        return Path(self.torchscript) if self.torchscript else None

    def with_paths_under(self, base: Path) -> ExternalModel:
        """A copy whose relative file and folder paths are resolved against ``base``."""
        changes = {key: str(base / value) for key in ("weights", "torchscript", "model_dir")
                   if (value := getattr(self, key)) and not Path(value).is_absolute()}
        return self.model_copy(update=changes)

    def identity(self, weights_digest: str) -> dict[str, Any]:
        """What the model id hashes: the source, the weights' digest, the wrapper settings."""
        body: dict[str, Any] = {"kind": self.kind, "dataset": self.dataset,
                                "input_range": list(self.input_range),
                                "mean": self.mean, "std": self.std}
        if self.factory:
            body.update(factory=self.factory, factory_kwargs=self.factory_kwargs,
                        weights_digest=weights_digest)
        elif self.torchscript:
            body.update(weights_digest=weights_digest)
        else:
            body.update(robustbench=self.robustbench, threat_model=self.threat_model)
        return body

    def model_id(self, weights_digest: str) -> str:
        """``<dataset>-external-<name>-<hash8>``: stable across machines and paths."""
        body = json.dumps(self.identity(weights_digest), sort_keys=True)
        digest = hashlib.sha256(body.encode()).hexdigest()[:8]
        slug = re.sub(r"[^a-z0-9]+", "_", self.default_label().lower()).strip("_")[:40]
        return "-".join(p for p in (self.dataset, EXTERNAL_STRATEGY, slug, digest) if p)

    def record(self, *, label: str, weights_digest: str) -> dict[str, Any]:
        """The config-like snapshot of results metadata and manifests: the keys of a training
        config that readers use (label, strategy, dataset, model, attacks, epochs, seed) plus
        ``external``: the source, the spec as given and the weights' digest."""
        return {
            "label": label,
            "strategy": EXTERNAL_STRATEGY,
            "dataset": {"name": self.dataset, "params": {}},
            "model": {"name": self.source, "kwargs": dict(self.factory_kwargs)},
            "attacks": [],
            "epochs": 0,
            "seed": None,
            "external": {"kind": self.kind, "source": self.source,
                         "weights_digest": weights_digest,
                         "spec": self.model_dump(mode="json", exclude_defaults=True)},
        }


def parse_external(data: Mapping[str, Any], *, source: str) -> ExternalModel:
    """Validate an external model spec; errors name ``source`` and the field."""
    try:
        return ExternalModel.model_validate(dict(data))
    except ValidationError as err:
        raise ExternalModelError(format_validation_error(err, source=source,
                                                         model=ExternalModel)) from None


def external_spec(config: Mapping[str, Any]) -> ExternalModel | None:
    """The external model of a config-like record (``ExternalModel.record``), or None for a
    training config."""
    ext = config.get("external")
    if config.get("strategy") != EXTERNAL_STRATEGY or not isinstance(ext, Mapping):
        return None
    return parse_external(ext["spec"], source=f"external model {config.get('label', '')!r}")


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


def spec_model_id(spec: ExternalModel) -> str:
    """The model id without loading the model (reads only the weights file, for its digest)."""
    path = spec.weights_file()
    return spec.model_id(_digest(path, spec) if path is not None else "")


def load_external(spec: ExternalModel, *, device: torch.device, label: str | None = None,
                  download: bool = False) -> LoadedExternal:
    """Build or load the model, wrap it (``InputScaling``), move it to ``device``, check its
    outputs; ``download`` lets RobustBench fetch a checkpoint missing from ``model_dir``."""
    if spec.factory:
        model, digest = _from_factory(spec)
    elif spec.torchscript:
        model, digest = _from_torchscript(spec)
    else:
        model, digest = _from_robustbench(spec, download=download)
    wrapped = InputScaling(model, input_range=spec.input_range, mean=spec.mean, std=spec.std)
    wrapped = wrapped.to(device).eval()
    check_logits(wrapped, spec, device)
    return LoadedExternal(spec, wrapped, spec.model_id(digest), digest,
                          label or spec.default_label())


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
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
        raise ExternalModelError(
            f"weights {path}: torch.load(weights_only=True) could not read it ({first[:300]}); "
            "mpo reads state dicts of tensors only, never pickled objects"
        ) from None
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


# ----------------------------------------------------------------------------------------------
# RobustBench


def _import_robustbench() -> types.ModuleType:
    """``robustbench.utils``, or ``MissingExtraError`` naming the extra.

    robustbench 1.1.1 (PyPI) declares ``pyautoattack`` as its dependency but imports it by the
    name of AutoAttack's git original, ``autoattack``: where that name is not importable, it is
    bound to ``pyautoattack`` (the same code) before robustbench is imported."""
    try:
        importlib.import_module("autoattack")
    except ImportError:
        with contextlib.suppress(ImportError):
            pyaa = importlib.import_module("pyautoattack")
            sys.modules.setdefault("autoattack", pyaa)
            for name, module in list(sys.modules.items()):
                if name.startswith("pyautoattack."):
                    sys.modules.setdefault("autoattack" + name.removeprefix("pyautoattack"),
                                           module)
    try:
        return importlib.import_module("robustbench.utils")
    except ImportError as err:
        raise MissingExtraError(
            f"RobustBench models need the package 'robustbench', which cannot be imported "
            f"({err}); install mpo's extra: pip install '{ROBUSTBENCH_EXTRA}' (or "
            f"pip install -e '.[robustbench]' in the checkout)"
        ) from None


class _WeightsOnlyTorch(types.ModuleType):
    """The ``torch`` module as robustbench's loader sees it during one load: every attribute is
    torch's, except ``load``, which is ``torch.load(..., weights_only=True)`` and records the
    files it read (their digests identify the weights)."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.read: list[Path] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def load(self, f: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        self.read.append(Path(f))
        return torch.load(f, *args, **kwargs)


def robustbench_names(dataset: str, threat_model: str) -> list[str]:
    """The zoo's entry names for a dataset and threat model."""
    zoo = importlib.import_module("robustbench.model_zoo")
    enums = importlib.import_module("robustbench.model_zoo.enums")
    models = zoo.model_dicts[enums.BenchmarkDataset(dataset)][enums.ThreatModel(threat_model)]
    return list(models)


def robustbench_files(spec: ExternalModel) -> list[Path]:
    """The checkpoint files robustbench reads for the entry (several for an ensemble)."""
    utils = _import_robustbench()
    enums = importlib.import_module("robustbench.model_zoo.enums")
    name, tm = str(spec.robustbench), str(spec.threat_model)
    names = robustbench_names(spec.dataset, tm)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ExternalModelError(f"robustbench model '{name}' is not in the zoo for "
                                 f"{spec.dataset} {tm} ({len(names)} entries){hint}")
    # Entries that timm hosts load from the Hugging Face hub, not from the model folder:
    # robustbench.utils.load_model checks the same name first.
    dataset = enums.BenchmarkDataset(spec.dataset).value.lower()
    timm_name = f"{name.lower().replace('-', '_')}_{dataset}_{tm.lower()}"
    if utils.timm.is_model(timm_name):
        raise ExternalModelError(
            f"robustbench model '{name}' is loaded by timm from the Hugging Face hub, not from a "
            "model folder; mpo evaluates zoo entries whose checkpoint is in the model folder"
        )
    base = Path(spec.model_dir or "models") / spec.dataset / tm / f"{name}.pt"
    ids = utils.all_models[enums.BenchmarkDataset(spec.dataset)][enums.ThreatModel(tm)][name][
        "gdrive_id"]
    if isinstance(ids, list):
        return [Path(f"{base}_m{i}.pt") for i in range(len(ids))]
    return [base]


def _from_robustbench(spec: ExternalModel, *, download: bool) -> tuple[nn.Module, str]:
    utils = _import_robustbench()
    files = robustbench_files(spec)
    missing = [str(f) for f in files if not f.is_file()]
    if missing and not download:
        raise ExternalModelError(
            f"robustbench model '{spec.robustbench}' ({spec.dataset} {spec.threat_model}): "
            f"{', '.join(missing)} not found; put the checkpoint there (robustbench's layout "
            "MODEL_DIR/DATASET/THREAT_MODEL/NAME.pt), point --model-dir at the folder that "
            "has it, or add --download"
        )
    proxy = _WeightsOnlyTorch()
    # Only robustbench's loader sees the proxy: other code keeps the real torch.load.
    with _patched(utils, "torch", proxy):
        try:
            model = utils.load_model(spec.robustbench, model_dir=spec.model_dir or "models",
                                     dataset=spec.dataset, threat_model=spec.threat_model)
        except Exception as err:  # refusals of weights_only, state dicts that do not fit, ...
            raise ExternalModelError(
                f"robustbench model '{spec.robustbench}' ({spec.dataset} {spec.threat_model}) "
                f"did not load: {type(err).__name__}: {str(err)[:400]}"
            ) from None
    read = proxy.read or files
    if len(read) == 1:
        return model, file_digest(read[0])
    combined = hashlib.sha256("".join(file_digest(p) for p in read).encode()).hexdigest()
    return model, combined  # an ensemble: one digest over its members' files, in order


@contextlib.contextmanager
def _patched(module: types.ModuleType, name: str, value: object) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)

