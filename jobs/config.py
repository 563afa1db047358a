"""Training configurations: validated, immutable, and hashed into a stable model id.

A config file is YAML with these fields (see ``jobs/recipes/*.yaml`` for complete examples)::

    label: Adv_max                   # display name; not part of the model id
    dataset: {name: mnist, params: {}, n_train: null}   # params only for toy; n_train = subset
    model: {name: mnist_cnn, kwargs: {}}
    optimizer: {name: adam, lr: 1.0e-3, momentum: 0.0, weight_decay: 0.0,
                milestones: [0.5], gamma: 0.1}          # milestones: fractions of all steps
    strategy: max                    # nat | single | avg | max | random | eat | msd
    attacks:                         # attack specs, as jobs.attacks.parse_spec takes them
      - {type: pgd_linf, eps: 0.3, steps: 20}
    start_small: true                # first epoch: every eps and RT limit divided by 3
    epochs: 10
    steps_per_epoch: null            # optional cap on the batches of an epoch
    batch_size: 100
    seed: 0
    augment: null                    # null = the dataset's default (crop+flip on CIFAR10)
    init: null                       # where the weights start (fine-tuning); null = from scratch

``init`` names one starting point (``jobs.finetune``; the weights load with ``weights_only``)::

    init: {checkpoint: runs/adv_inf/checkpoint.pt}         # an mpo checkpoint
    init: {model: Adv_inf}                                   # a model of the same grid (grids only)
    init: {external: {factory: pkg.mod:build, weights: w.pt, dataset: mnist}}   # or torchscript:,
                                                             # robustbench: (jobs.external)

The model id hashes the starting point's identity (the parent's model id, and the weights
file's sha256 where there is a file), never its path: the same recipe from another parent is
another model. ``epochs`` may be a fraction (0.5: half an epoch's steps), as fine-tuning often is.

Attack specs are validated by ``jobs.attacks.parse_spec`` when the config is built and stored in
their canonical form (``AttackSpec.to_dict``), so ``config.json`` holds every hyperparameter
explicitly. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from jobs.errors import ConfigError
from jobs.io import load_yaml
from jobs.strategy_table import STRATEGIES as STRATEGY_NAMES
from jobs.strategy_table import strategy
from jobs.validation import FrozenModel, format_validation_error

#: The training strategies' names (``jobs.strategy_table``: the one table of strategies).
STRATEGIES: tuple[str, ...] = tuple(STRATEGY_NAMES)


def _strategy(name: object) -> str:
    """A known strategy name (a ValueError listing them for another)."""
    if not isinstance(name, str) or name not in STRATEGY_NAMES:
        quoted = [f"'{n}'" for n in STRATEGY_NAMES]
        raise ValueError(f"Input should be {', '.join(quoted[:-1])} or {quoted[-1]}")
    return name


#: A strategy name, as configs and grid entries take it.
StrategyName = Annotated[str, BeforeValidator(_strategy)]


def check_combined_attacks(strategy: str, specs: list[dict[str, Any]]) -> None:
    """``ValueError`` unless ``strategy`` can combine its (normalised) attack specs into the one
    attack it trains on: for ``msd``, l_p specs with the same k, reps and random_start."""
    if strategy != "msd":
        return
    from jobs.attacks import AttackSpecError
    from jobs.attacks.msd.spec import MsdSpec

    try:
        MsdSpec.combine(specs)
    except AttackSpecError as err:
        raise ValueError(f"strategy 'msd': {err}") from None




class DatasetConfig(FrozenModel):
    name: str = Field(description="dataset name: mnist, cifar10 or toy")
    params: dict[str, Any] = Field(default_factory=dict, description="toy parameters (d, alpha, ...)")
    n_train: int | None = Field(None, ge=1, description="train on a deterministic subset of this size")

    @model_validator(mode="after")
    def _known(self) -> DatasetConfig:
        from jobs.datasets import DataError, dataset_info

        try:
            dataset_info(self.name, self.params or None)
        except DataError as err:
            raise ValueError(str(err)) from None
        return self


#: ``model: {name: init}``: the architecture of an external starting point (``init.external``:
#: a factory, TorchScript file or RobustBench entry), trained as it is loaded (``jobs.finetune``)
INIT_ARCHITECTURE = "init"


class ModelConfig(FrozenModel):
    name: str = Field(description="a name from jobs.models.MODELS")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from jobs.model_names import MODEL_NAMES

        if name not in MODEL_NAMES and name != INIT_ARCHITECTURE:
            raise ValueError(f"unknown model '{name}'; valid models: {', '.join(sorted(MODEL_NAMES))}"
                             f", or '{INIT_ARCHITECTURE}' (an external starting point's own)")
        return name


class OptimizerConfig(FrozenModel):
    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    milestones: list[float] = Field(
        default_factory=list, description="fractions of all training steps where lr *= gamma"
    )
    gamma: float = Field(0.1, gt=0, le=1)

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        for v in values:
            if not 0.0 < v < 1.0:
                raise ValueError(f"milestone {v} is not a fraction of training in (0, 1)")
        if values != sorted(values):
            raise ValueError(f"milestones {values} must be increasing")
        return values


def _epochs(value: object) -> object:
    """Integral epochs stay ints (``3.0`` -> ``3``): the model id hashes the JSON form."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class InitConfig(FrozenModel):
    """Where a model's weights start: exactly one of ``model`` (a grid model, by label),
    ``checkpoint`` (an mpo checkpoint file) or ``external`` (``jobs.external.ExternalModel``).

    ``parent`` and ``digest`` are the starting point's identity, filled in when it is resolved
    (``jobs.finetune.resolve_init``; a sweep's plan for grid parents): the parent's model id and
    the sha256 of its weights file (none for a grid parent: its model id fixes it in the run)."""

    model: str | None = Field(None, description="a model of the same grid, by its label")
    checkpoint: str | None = Field(None, description="an mpo checkpoint file (checkpoint.pt)")
    external: dict[str, Any] | None = Field(
        None, description="an external model: factory + weights, torchscript or robustbench")
    parent: str | None = Field(None, description="resolved: the parent's model id")
    digest: str | None = Field(None, description="resolved: sha256 of the parent's weights file")

    @model_validator(mode="after")
    def _one(self) -> InitConfig:
        given = [k for k in ("model", "checkpoint", "external") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one starting point: model (a grid model's label), "
                             "checkpoint (an mpo checkpoint) or external (a factory with weights, "
                             f"torchscript or robustbench); got {', '.join(given) or 'none'}")
        if self.external is not None:
            from jobs.external import ExternalModelError, parse_external

            try:
                parse_external(self.external, source="init.external")
            except ExternalModelError as err:
                raise ValueError(str(err)) from None
        return self

    @property
    def kind(self) -> str:
        return "model" if self.model is not None else "checkpoint" if self.checkpoint else "external"

    @property
    def where(self) -> str:
        """The starting point as the user named it (for messages)."""
        if self.model is not None:
            return f"grid model '{self.model}'"
        if self.checkpoint is not None:
            return f"checkpoint {self.checkpoint}"
        from jobs.external import parse_external

        spec = parse_external(self.external or {}, source="init.external")
        return f"external {spec.kind} model {spec.source}"

    def identity(self) -> dict[str, Any]:
        """What the model id hashes: the parent's id and weights digest, never a path."""
        if self.parent is None:
            raise ConfigError(f"init: the starting point ({self.where}) is not resolved yet; "
                              "jobs.finetune.resolve_init (or the sweep's plan) resolves it")
        return {"parent": self.parent, "digest": self.digest}


class TrainConfig(FrozenModel):
    label: str = Field("", description="display name, e.g. Adv_max (not part of the model id)")
    dataset: DatasetConfig
    model: ModelConfig
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    strategy: StrategyName
    attacks: list[dict[str, Any]] = Field(default_factory=list)
    start_small: bool = False
    epochs: Annotated[int | float, BeforeValidator(_epochs)] = Field(
        gt=0, description="epochs to train; a fraction trains that share of an epoch's steps")
    steps_per_epoch: int | None = Field(None, ge=1)
    batch_size: int = Field(ge=1)
    seed: int = Field(0, ge=0)
    augment: bool | None = None
    init: InitConfig | None = Field(None, description="where the weights start (fine-tuning)")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        strategy(self.strategy).check_attack_count(len(self.attacks))
        if self.model.name == INIT_ARCHITECTURE and (self.init is None or self.init.external is None):
            raise ValueError(f"model.name '{INIT_ARCHITECTURE}' means the architecture of an "
                             "external starting point (init.external); this config has "
                             + (f"init.{self.init.kind}" if self.init else "no init")
                             + ": name the architecture (e.g. mnist_cnn)")
        info = self.dataset_info()
        if self.augment and info.augmentation is None:
            raise ValueError(f"augment: dataset '{info.name}' has no training augmentation")
        normalised = [_normalise_attack(spec, i) for i, spec in enumerate(self.attacks)]
        check_combined_attacks(self.strategy, normalised)
        # frozen model: set the normalised specs once, during validation
        object.__setattr__(self, "attacks", normalised)
        return self

    # ------------------------------------------------------------------------------------------

    def dataset_info(self):
        from jobs.datasets import dataset_info

        return dataset_info(self.dataset.name, self.dataset.params or None)

    def families(self) -> list[str]:
        """The training attacks' perturbation families, in config order."""
        from jobs.attacks.spec import parse_spec

        return [parse_spec(spec).family for spec in self.attacks]

    @property
    def epoch_count(self) -> int:
        """The epochs the training loop runs: ``epochs`` rounded up (the last one may be short)."""
        return math.ceil(self.epochs)

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if data.get("init") is None:  # configs from scratch keep the form (and id) they had
            data.pop("init", None)
        return data

    def model_id(self) -> str:
        """Stable id: ``<dataset>-<strategy>[-<families>]-<hash8>``, hash of the config minus label
        (a starting point counts by its identity, ``InitConfig.identity``, not its path)."""
        body = self.to_dict()
        body.pop("label")
        if self.init is not None:
            body["init"] = self.init.identity()
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
        parts = [self.dataset.name, self.strategy]
        if self.attacks:
            parts.append("_".join(f.replace("+", "") for f in self.families()))
        parts.append(digest)
        return "-".join(parts)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some top-level fields changed (nested ones as dicts)."""
        data = self.to_dict()
        for key, value in changes.items():
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json")
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                value = {**data[key], **value}
            data[key] = value
        return make_train_config(data)


def scale_spec(spec: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """A copy of an attack spec dict on its ball scaled by ``factor`` (``AttackSpec.scaled``: the
    radius and step size, RT limits, both parts of an affine attack). ``start_small`` uses 1/3."""
    from jobs.attacks.spec import parse_spec

    return parse_spec(spec).scaled(factor).to_dict()


def _normalise_attack(spec: Any, index: int) -> dict[str, Any]:
    """The attack spec's canonical dict (every default explicit), or a ValueError naming it."""
    from jobs.attacks import AttackSpecError, parse_spec

    if not isinstance(spec, dict):
        raise ValueError(f"attacks[{index}]: an attack spec must be a mapping, got {spec!r}")
    try:
        return parse_spec(spec).to_dict()
    except AttackSpecError as err:
        raise ValueError(f"attacks[{index}]: {err}") from None


def make_train_config(data: Mapping[str, Any], *, source: str | None = None) -> TrainConfig:
    """Validate a mapping into a TrainConfig; ``ConfigError`` names ``source`` and the field."""
    source = source or "training config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a training config must be a mapping, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source=source, model=TrainConfig)) from None


def load_train_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read and validate a YAML (or JSON) training config. Errors name the file and the field."""
    data = load_yaml(path, error=ConfigError, what="training config")
    return make_train_config(data if data is not None else {}, source=str(path))


# ----------------------------------------------------------------------------------------------
# Recipes: ready configs shipped in jobs/recipes/*.yaml


def recipe_names() -> list[str]:
    folder = resources.files("jobs") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_path(name: str) -> Path:
    path = Path(str(resources.files("jobs") / "recipes" / f"{name}.yaml"))
    if not path.exists():
        raise ConfigError(f"unknown recipe '{name}'; valid recipes: {', '.join(recipe_names())}")
    return path


class _Recipes(Mapping[str, TrainConfig]):
    """``RECIPES[name]`` loads and validates ``jobs/recipes/<name>.yaml`` on first access."""

    def __init__(self) -> None:
        self._cache: dict[str, TrainConfig] = {}

    def __getitem__(self, name: str) -> TrainConfig:
        if name not in self._cache:
            if name not in recipe_names():
                raise KeyError(name)
            self._cache[name] = load_train_config(recipe_path(name))
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(recipe_names())

    def __len__(self) -> int:
        return len(recipe_names())


RECIPES: Mapping[str, TrainConfig] = _Recipes()


def resolve_train_config(path_or_recipe: str | os.PathLike[str]) -> TrainConfig:
    """A config file path, or the name of a shipped recipe."""
    path = Path(path_or_recipe)
    if path.exists() or path.suffix in (".yaml", ".yml", ".json"):
        return load_train_config(path)
    if str(path_or_recipe) in recipe_names():
        return RECIPES[str(path_or_recipe)]
    raise ConfigError(
        f"{path_or_recipe}: no such config file, and not a recipe name "
        f"(recipes: {', '.join(recipe_names())})"
    )
