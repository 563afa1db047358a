"""Sweep grids: validated YAML files that expand into one training trial per distinct model.

A grid names, per experiment (a *group*: one table of the paper, e.g. ``mnist-lp``), the training
settings shared by its models, the named training attacks, the models (label -> strategy and
attacks) and the perturbation families the group is reported on; and, per dataset, the
evaluation suite and its budgets (``n_test``, ``shard_size``, ``restarts``)::

    name: toy
    description: ...
    seeds: [0]
    evaluation:
      toy: {suite: toy, n_test: 1000, shard_size: 250,
            audit: {n: 100, budgets: full}}   # optional: the strength audit (jobs.audit)
    experiments:
      toy:                                    # group name
        families: [linf, l1]                  # default: the suite's group of the same name
        affine: []
        train:                                # jobs.config.TrainConfig fields except
          dataset: {name: toy}                #   label, strategy, attacks and seed
          model: {name: linear}
          optimizer: {name: adam, lr: 0.01}
          epochs: 5
          batch_size: 100
        attacks:                              # named training attacks (jobs.attacks specs)
          linf: {type: linf, epsilon: 0.4, k: 10}
        models:                               # label -> strategy and training attacks
          Nat: {strategy: nat}
          Adv_inf: {strategy: single, attacks: [linf]}

Evaluation-only models (``jobs.external``: a PyTorch factory, a TorchScript file, a RobustBench
zoo entry) sit beside the trained ones in the groups they name; their trials load the model and
evaluate it, with no training. Relative paths are relative to the directory ``mpo sweep`` runs
in (so that ``--resume`` finds them again)::

    external:
      MyNet: {factory: mymodels.cifar:build, weights: mynet.pt, dataset: cifar10,
              groups: [cifar-lp], mean: [0.49, 0.48, 0.45], std: [0.25, 0.24, 0.26]}
      Ding2020MMA: {robustbench: Ding2020MMA, threat_model: Linf, model_dir: models,
                    dataset: cifar10, groups: [cifar-lp]}
      Scripted: {torchscript: net.pt, dataset: cifar10, input_range: [0, 255], groups: [cifar-lp]}

``orchestrator.plan`` expands a validated grid into the sweep's trials and shards. Nothing here
imports Ray or torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from jobs.config import StrategyName
from jobs.datasets import check_auditable
from jobs.errors import MpoError
from jobs.external import ExternalModel
from jobs.io import load_yaml, read_text
from jobs.validation import FrozenModel, format_validation_error

if TYPE_CHECKING:
    pass

GRID_SUFFIXES = (".yaml", ".yml")
#: TrainConfig fields a grid sets itself, per model; an experiment's ``train`` block may not.
GRID_OWNED_TRAIN_FIELDS = ("label", "strategy", "attacks", "seed")


class GridError(MpoError, ValueError):
    """An invalid grid: the message names the file, the field, the value and what is allowed."""


class AuditPlan(FrozenModel):
    """The strength audit of every model of a dataset (``jobs.audit``): AutoAttack's standard
    version on ``n`` sampled test points, at the full budget or every budget point."""

    n: int = Field(100, ge=1, description="test points per model (a seeded sample)")
    budgets: Literal["full", "all"] = "full"
    seed: int = Field(0, ge=0)


class EvaluationPlan(FrozenModel):
    """How one dataset's models are evaluated."""

    suite: str = Field(description="a built-in suite name (jobs.evaluation) or a suite file path")
    n_test: int = Field(ge=1, description="evaluate on the first n_test test points")
    shard_size: int = Field(ge=1, description="test points per evaluation task")
    restarts: int | None = Field(
        None, ge=1, description="override 'reps' (random restarts) of the suite's l_p attacks"
    )
    audit: AuditPlan | None = Field(
        None, description="run the strength audit (AutoAttack standard) on every model")


class ModelEntry(FrozenModel):
    strategy: StrategyName = Field(description="a training strategy (jobs.strategy_table)")
    attacks: list[str] = Field(default_factory=list, description="names from the attacks table")


class Experiment(FrozenModel):
    families: list[str] | None = Field(None, description="families the group is reported on")
    affine: list[str] | None = Field(None, description="affine families, e.g. linf+rt")
    train: dict[str, Any]
    attacks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    models: dict[str, ModelEntry] = Field(min_length=1)

    @field_validator("train")
    @classmethod
    def _no_grid_fields(cls, train: dict[str, Any]) -> dict[str, Any]:
        owned = [k for k in GRID_OWNED_TRAIN_FIELDS if k in train]
        if owned:
            raise ValueError(
                f"'{owned[0]}' is set per model by the grid (models: and seeds:), not in train:; "
                f"train: takes the other TrainConfig fields (dataset, model, optimizer, epochs, "
                "steps_per_epoch, batch_size, start_small, augment)"
            )
        if not isinstance(train.get("dataset"), dict) or "name" not in train["dataset"]:
            raise ValueError("train.dataset.name is required (toy, mnist or cifar10)")
        return train

    @model_validator(mode="after")
    def _attack_names(self) -> Experiment:
        for label, entry in self.models.items():
            for name in entry.attacks:
                if name not in self.attacks:
                    allowed = ", ".join(self.attacks) or "none defined"
                    raise ValueError(
                        f"models.{label}.attacks: unknown attack '{name}'; "
                        f"allowed (this experiment's attacks table): {allowed}"
                    )
        return self

    @property
    def dataset(self) -> str:
        return str(self.train["dataset"]["name"])


class ExternalEntry(ExternalModel):
    """An evaluation-only model of a grid: an external model and the groups it is reported in."""

    groups: list[str] = Field(min_length=1, description="experiments (groups) to report it in")

    def spec(self) -> ExternalModel:
        return ExternalModel.model_validate(self.model_dump(exclude={"groups"}))


class Grid(FrozenModel):
    name: str = Field(min_length=1)
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    evaluation: dict[str, EvaluationPlan] = Field(min_length=1)
    experiments: dict[str, Experiment] = Field(min_length=1)
    external: dict[str, ExternalEntry] = Field(
        default_factory=dict, description="evaluation-only models: label -> external model")

    @model_validator(mode="after")
    def _evaluation_per_dataset(self) -> Grid:
        for group, exp in self.experiments.items():
            if exp.dataset not in self.evaluation:
                raise ValueError(
                    f"experiments.{group}: dataset '{exp.dataset}' has no evaluation plan; "
                    f"evaluation: has {', '.join(self.evaluation)}"
                )
        for dataset, plan in self.evaluation.items():
            if plan.audit is not None:
                try:
                    check_auditable(dataset, field=f"evaluation.{dataset}.audit")
                except MpoError as err:
                    raise ValueError(str(err)) from None
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} has duplicates")
        for label, entry in self.external.items():
            for group in entry.groups:
                exp = self.experiments.get(group)
                if exp is None:
                    raise ValueError(f"external.{label}.groups: unknown group '{group}'; the "
                                     f"grid's experiments: {', '.join(self.experiments)}")
                if exp.dataset != entry.dataset:
                    raise ValueError(f"external.{label}: dataset '{entry.dataset}' but group "
                                     f"'{group}' is on '{exp.dataset}'")
                if label in exp.models:
                    raise ValueError(f"external.{label}: group '{group}' already has a trained "
                                     f"model labelled '{label}'; one label, one model")
        return self

    def digest(self) -> str:
        """Hash of the validated grid (not its text): equal for equivalent files."""
        body = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Loading


def builtin_grid_names() -> list[str]:
    folder = resources.files("orchestrator") / "grids"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def builtin_grid_path(name: str) -> Path:
    return Path(str(resources.files("orchestrator") / "grids" / f"{name}.yaml"))


def resolve_grid_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A grid file path, or the name of a shipped grid."""
    text = str(name_or_path)
    path = Path(text)
    if path.exists():
        return path
    if path.suffix in GRID_SUFFIXES or os.sep in text:
        raise GridError(f"{text}: no such grid file")
    if text in builtin_grid_names():
        return builtin_grid_path(text)
    raise GridError(
        f"{text}: not a grid file, and not a shipped grid; shipped grids: "
        f"{', '.join(builtin_grid_names())}"
    )


def parse_grid(data: Any, *, source: str) -> Grid:
    if not isinstance(data, dict):
        raise GridError(f"{source}: a grid must be a mapping, got {type(data).__name__}")
    try:
        return Grid.model_validate(data)
    except ValidationError as err:
        raise GridError(format_validation_error(err, source=source, model=Grid)) from None


def load_grid_text(name_or_path: str | os.PathLike[str]) -> tuple[Grid, str, Path]:
    """(validated grid, the file's text, its path)."""
    path = resolve_grid_path(name_or_path)
    text = read_text(path, error=GridError, what="grid file")
    data = load_yaml(path, error=GridError, what="grid file")
    return parse_grid(data, source=str(path)), text, path


def load_grid(name_or_path: str | os.PathLike[str]) -> Grid:
    return load_grid_text(name_or_path)[0]
