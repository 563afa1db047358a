"""What an external model is: its spec (``ExternalModel``), identity and config-like record.

Torch-free, so that grids validate without importing torch; ``jobs.external.load`` loads it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from jobs.errors import MpoError
from jobs.validation import FrozenModel, format_validation_error

#: The strategy name of every external model in results and manifests.
EXTERNAL_STRATEGY = "external"

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class ExternalModelError(MpoError, ValueError):
    """An external model that cannot be loaded or does not fit the dataset; names the model."""


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
        if rb and self.dataset != "cifar10":
            raise ValueError(f"dataset '{self.dataset}': mpo evaluates RobustBench models of "
                             "cifar10 only (its zoo has no mnist or toy models)")
        lo, hi = self.input_range
        if not hi > lo:
            raise ValueError(f"input_range {list(self.input_range)}: the upper end must be above "
                             "the lower (e.g. [0, 1] or [0, 255])")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values, std {len(self.std)}")
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
