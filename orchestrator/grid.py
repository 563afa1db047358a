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

A model may start from another (``jobs.finetune``): ``init: LABEL`` (or ``GROUP/LABEL``) names
a model of the grid, trained first in the same sweep, ``init: {checkpoint: FILE}`` or
``init: {external: {...}}`` one from elsewhere; its own ``train:`` fields go over the
experiment's (mappings merge: ``optimizer: {lr: ...}`` keeps the other optimiser fields). A
group's ``soups:`` average models of one architecture (``jobs.soup``), each weight vector an
evaluation-only model run once its ingredients are trained::

        models:
          Adv_inf: {strategy: single, attacks: [linf]}
          FT_1: {strategy: single, attacks: [l1], init: Adv_inf, train: {epochs: 0.5}}
          FT_inf: {strategy: single, attacks: [linf], init: Adv_inf, train: {epochs: 0.5}}
        soups:
          Soup_inf_1: {models: [FT_inf, FT_1], points: 5}   # or weights: [[0.7, 0.3], ...]

Unknown parents and cycles are refused with their path (``Grid.lineage``), a parent of another
dataset or architecture when the grid is expanded (``orchestrator.plan``).

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


def _no_owned(train: dict[str, Any]) -> None:
    owned = [k for k in GRID_OWNED_TRAIN_FIELDS if k in train]
    if owned:
        raise ValueError(
            f"'{owned[0]}' is set per model by the grid (models: and seeds:), not in train:; "
            f"train: takes the other TrainConfig fields (dataset, model, optimizer, epochs, "
            "steps_per_epoch, batch_size, start_small, augment)"
        )


class ModelEntry(FrozenModel):
    strategy: StrategyName = Field(description="a training strategy (jobs.strategy_table)")
    attacks: list[str] = Field(default_factory=list, description="names from the attacks table")
    init: str | dict[str, Any] | None = Field(
        None, description="where the weights start: a model of the grid (its label, or "
        "GROUP/LABEL for another experiment's), or {checkpoint: FILE} or {external: {...}}")
    train: dict[str, Any] = Field(
        default_factory=dict, description="this model's TrainConfig fields over the experiment's "
        "train: (a fine-tuning's optimizer, epochs, start_small, ...); mappings merge")

    @field_validator("train")
    @classmethod
    def _own_fields(cls, train: dict[str, Any]) -> dict[str, Any]:
        _no_owned(train)
        if "dataset" in train:
            raise ValueError("'dataset' is the experiment's (train.dataset), one per group")
        return train

    @field_validator("init")
    @classmethod
    def _init_form(cls, init: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(init, dict):
            from jobs.config import InitConfig

            if "model" in init or "parent" in init or "digest" in init:
                raise ValueError("a grid model names its grid parent as init: LABEL; the mapping "
                                 "form takes checkpoint: FILE or external: {...}")
            InitConfig.model_validate(init)
        elif isinstance(init, str) and not init.strip():
            raise ValueError("init: an empty label")
        return init

    @property
    def parent_label(self) -> str | None:
        """The grid model it starts from (LABEL or GROUP/LABEL), if any."""
        return self.init if isinstance(self.init, str) else None


class SoupEntry(FrozenModel):
    """A model soup family: two or more models of the experiment (one architecture) and the
    weight vectors to evaluate, or ``points`` per edge of the line or simplex between them
    (``jobs.soup.soup_weights``: the ingredients themselves left out)."""

    models: list[str] = Field(min_length=2, description="the ingredients: model labels")
    weights: list[list[float]] | None = Field(None, description="weight vectors, one per soup")
    points: int | None = Field(None, ge=3, description="points per edge, ends included")

    @model_validator(mode="after")
    def _one_way(self) -> SoupEntry:
        from jobs.soup import check_weights

        if (self.weights is None) == (self.points is None):
            raise ValueError("give weights: (a list of weight vectors) or points: (a number of "
                             "points along the line or simplex), one of them")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models {self.models} has duplicates")
        for i, w in enumerate(self.weights or []):
            try:
                check_weights(w, len(self.models), source=f"weights[{i}]")
            except MpoError as err:
                raise ValueError(str(err)) from None
        return self

    def vectors(self) -> list[tuple[float, ...]]:
        from jobs.soup import check_weights, soup_weights

        if self.weights is not None:
            return [check_weights(w, len(self.models), source="weights") for w in self.weights]
        return soup_weights(len(self.models), int(self.points or 0))


class Experiment(FrozenModel):
    families: list[str] | None = Field(None, description="families the group is reported on")
    affine: list[str] | None = Field(None, description="affine families, e.g. linf+rt")
    train: dict[str, Any]
    attacks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    models: dict[str, ModelEntry] = Field(min_length=1)
    soups: dict[str, SoupEntry] = Field(
        default_factory=dict, description="model soups: family name -> ingredients and weights")

    @field_validator("train")
    @classmethod
    def _no_grid_fields(cls, train: dict[str, Any]) -> dict[str, Any]:
        _no_owned(train)
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
        for name, soup in self.soups.items():
            if name in self.models:
                raise ValueError(f"soups.{name}: a model of this experiment has that label; a "
                                 "soup family takes a name of its own")
            for label in soup.models:
                if label not in self.models:
                    raise ValueError(f"soups.{name}.models: unknown model '{label}'; allowed "
                                     f"(this experiment's models): {', '.join(self.models)}")
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
        self.lineage()  # unknown parents and cycles
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

    def parent_of(self, group: str, label: str) -> tuple[str, str] | None:
        """(group, label) of the grid model that ``group``'s ``label`` starts from, if any;
        ``ValueError`` naming the field for an unknown one."""
        ref = self.experiments[group].models[label].parent_label
        if ref is None:
            return None
        pgroup, _, plabel = ref.rpartition("/")
        pgroup = pgroup or group
        exp = self.experiments.get(pgroup)
        if exp is None or plabel not in exp.models:
            where = (f"experiment '{pgroup}' has models {', '.join(exp.models)}" if exp else
                     f"experiments: {', '.join(self.experiments)}")
            raise ValueError(f"experiments.{group}.models.{label}.init: unknown parent '{ref}' "
                             f"(LABEL, or GROUP/LABEL); {where}")
        return pgroup, plabel

    def lineage(self) -> list[tuple[str, str]]:
        """Every (group, label) of a trained model, parents before children; ``ValueError``
        for an unknown parent or a cycle, with its path."""
        order: list[tuple[str, str]] = []
        state: dict[tuple[str, str], str] = {}

        def visit(node: tuple[str, str], path: list[tuple[str, str]]) -> None:
            if state.get(node) == "done":
                return
            if state.get(node) == "open":
                cycle = [*path[path.index(node):], node]
                raise ValueError(f"experiments.{node[0]}.models.{node[1]}.init: a cycle: "
                                 + " -> ".join(f"{g}/{lbl}" for g, lbl in cycle))
            state[node] = "open"
            parent = self.parent_of(*node)
            if parent is not None:
                visit(parent, [*path, node])
            state[node] = "done"
            order.append(node)

        for group, exp in self.experiments.items():
            for label in exp.models:
                visit((group, label), [])
        return order

    def digest(self) -> str:
        """Hash of the validated grid (not its text): equal for equivalent files."""
        data = self.model_dump(mode="json")
        for exp in data["experiments"].values():  # fields added later count only when set
            if not exp.get("soups"):
                exp.pop("soups", None)
            for model in exp["models"].values():
                for key in ("init", "train"):
                    if not model.get(key):
                        model.pop(key, None)
        body = json.dumps(data, sort_keys=True)
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
