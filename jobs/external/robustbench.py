"""RobustBench zoo entries, loaded through the optional ``robustbench`` package.

``robustbench.utils.load_model`` builds the entry's architecture and reads its checkpoint from
``model_dir`` in robustbench's layout (``DIR/cifar10/Linf/NAME.pt``; an ensemble's members as
``NAME.pt_m0.pt``, ...). It calls ``torch.load`` without ``weights_only``: for the load, its module
sees a ``torch`` whose ``load`` forces ``weights_only=True``, so no pickled object is ever run.
Entries that timm hosts (loaded from the Hugging Face hub) are refused.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import hashlib
import importlib
import importlib.metadata
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jobs.checkpoint import _load_failure as load_failure
from jobs.errors import MpoError
from jobs.external.spec import ExternalModel, ExternalModelError
from jobs.io import file_digest

#: The extra that installs the RobustBench loader.
ROBUSTBENCH_EXTRA = "mpo[robustbench]"


def _import_robustbench() -> types.ModuleType:
    """``robustbench.utils``, or ``MpoError`` naming the extra.

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
        utils = importlib.import_module("robustbench.utils")
    except ImportError as err:
        raise MpoError(
            f"RobustBench models need the package 'robustbench', which cannot be imported "
            f"({err}); install mpo's extra: pip install '{ROBUSTBENCH_EXTRA}' (or "
            f"pip install -e '.[robustbench]' in the checkout)"
        ) from None
    _check_not_overwritten(Path(str(utils.__file__)))
    return utils


def _check_not_overwritten(utils_file: Path) -> None:
    """Refuse a robustbench whose ``utils.py`` is not the file its installed release recorded.

    torchattacks 3.5.1 ships an old copy of robustbench as a top-level package: installed after
    robustbench, it overwrites robustbench's files (an older zoo, another ``load_model``)."""
    try:
        record = importlib.metadata.files("robustbench") or []
    except importlib.metadata.PackageNotFoundError:
        return  # not installed as a distribution (a source checkout on the path): nothing to check
    entry = next((p for p in record if p.as_posix() == "robustbench/utils.py"), None)
    if entry is None or entry.hash is None or entry.hash.mode != "sha256":
        return
    digest = base64.urlsafe_b64encode(hashlib.sha256(utils_file.read_bytes()).digest())
    if digest.rstrip(b"=").decode() != entry.hash.value.rstrip("="):
        version = importlib.metadata.version("robustbench")
        raise MpoError(
            f"the installed robustbench {version} has had its files overwritten ({utils_file} "
            "is not the file it was installed with): torchattacks 3.5.1 ships an old copy of "
            "robustbench and overwrites it when installed after it; repair with: pip install "
            "--force-reinstall --no-deps robustbench"
        )


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


def load_robustbench(spec: ExternalModel, *, download: bool) -> tuple[nn.Module, str]:
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
                f"did not load from {', '.join(map(str, proxy.read or files))}: {load_failure(err)}"
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
