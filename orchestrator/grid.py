"""Sweep grids: validated YAML files that expand into one training trial per distinct model.

A grid names, per experiment (a *group*: one table of the paper, e.g. ``mnist-lp``), the training
settings shared by its models, the named training attacks, the models (label -> strategy and
attacks) and the perturbation families the group is reported on; and, per dataset, the
evaluation suite and its budgets (``n_test``, ``shard_size``, ``restarts``)::

    name: toy
    description: ...
    seeds: [0]
    evaluation:
      toy: {suite: toy, n_test: 1000, shard_size: 250}
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

Expansion builds a ``TrainConfig`` per (model, seed); identical configs (same ``model_id``) in
several groups are one trial that is evaluated for all of them (Nat shared by ``mnist-lp`` and
``mnist-rt`` is trained once). An external model is one trial (seeds do not apply). Nothing here
imports Ray; torch is imported only by expansion.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator, model_validator

from jobs.config import StrategyName
from jobs.errors import MpoError
from jobs.external import EXTERNAL_STRATEGY, ExternalModel
from jobs.io import load_yaml, read_text
from jobs.validation import FrozenModel, format_validation_error

if TYPE_CHECKING:
    from jobs.suite import EvalSuite

GRID_SUFFIXES = (".yaml", ".yml")
#: TrainConfig fields a grid sets itself, per model; an experiment's ``train`` block may not.
GRID_OWNED_TRAIN_FIELDS = ("label", "strategy", "attacks", "seed")


class GridError(MpoError, ValueError):
    """An invalid grid: the message names the file, the field, the value and what is allowed."""


class EvaluationPlan(FrozenModel):
    """How one dataset's models are evaluated."""

    suite: str = Field(description="a built-in suite name (jobs.evaluation) or a suite file path")
    n_test: int = Field(ge=1, description="evaluate on the first n_test test points")
    shard_size: int = Field(ge=1, description="test points per evaluation task")
    restarts: int | None = Field(
        None, ge=1, description="override 'reps' (random restarts) of the suite's l_p attacks"
    )


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


# ----------------------------------------------------------------------------------------------
# Expansion


@dataclass(frozen=True)
class Shard:
    model_id: str
    attack: str
    start: int
    stop: int

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "attack": self.attack, "start": self.start, "stop": self.stop}

    @property
    def filename(self) -> str:
        """The results file name jobs.evaluation writes for this shard."""
        return f"{self.attack}__{self.start}-{self.stop}.parquet"


@dataclass
class TrialPlan:
    model_id: str
    label: str
    dataset: str
    strategy: str
    groups: list[str]
    config: dict[str, Any]
    attacks: list[str] = field(default_factory=list)  # suite attacks to evaluate, suite order

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "dataset": self.dataset,
            "strategy": self.strategy,
            "groups": list(self.groups),
            "attacks": list(self.attacks),
            "config": self.config,
        }


@dataclass
class GroupPlan:
    name: str
    dataset: str
    families: list[str]
    affine: list[str]
    models: list[str] = field(default_factory=list)

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "families": list(self.families),
            "affine": list(self.affine),
            "models": list(self.models),
        }


@dataclass
class SweepPlan:
    """A grid expanded: groups, distinct trials (keyed by model id), suites and shards."""

    grid: Grid
    groups: dict[str, GroupPlan]
    trials: dict[str, TrialPlan]
    suites: dict[str, EvalSuite]  # dataset -> its suite (restarts applied)
    shards: list[Shard]
    suite_files: dict[str, Path] = field(default_factory=dict)  # dataset -> suite file (not built-in)

    def trial_shards(self, model_id: str) -> list[Shard]:
        return [s for s in self.shards if s.model_id == model_id]

    def trial_groups(self, model_id: str) -> dict[str, dict[str, list[str]]]:
        """{group: {"families", "affine"}} for the groups a trial is reported in."""
        return {
            g: {"families": list(self.groups[g].families), "affine": list(self.groups[g].affine)}
            for g in self.trials[model_id].groups
        }

    def manifest(self) -> dict[str, Any]:
        return {
            "grid": self.grid.name,
            "grid_digest": self.grid.digest(),
            "groups": {name: g.manifest_entry() for name, g in self.groups.items()},
            "evaluation": {
                ds: {**plan.model_dump(mode="json"), "suite_name": self.suites[ds].name}
                for ds, plan in self.grid.evaluation.items()
                if ds in self.suites
            },
            "trials": {mid: t.manifest_entry() for mid, t in self.trials.items()},
            "shards": [s.to_dict() for s in self.shards],
        }


def _suite_with_restarts(suite: EvalSuite, restarts: int | None) -> EvalSuite:
    """A copy of ``suite`` whose attacks with random restarts (l_p and affine) use ``restarts``."""
    if restarts is None:
        return suite
    attacks = [dataclasses.replace(att, spec=att.spec.with_restarts(restarts)) for att in suite.attacks]
    return dataclasses.replace(suite, attacks=attacks)


def _load_suite(plan: EvaluationPlan, *, dataset: str, grid_dir: Path | None, source: str,
                suite_dir: Path | None = None) -> tuple[Any, Path | None]:
    """(the suite with the grid's restarts applied, its file when it is not a built-in one).

    A suite file is looked up relative to the grid file, or in ``suite_dir`` (a run folder's
    ``suites/`` snapshot) when given."""
    from jobs.suite import load_suite

    ref = plan.suite
    is_file = Path(ref).suffix in GRID_SUFFIXES
    if is_file and suite_dir is not None:
        ref = str(suite_dir / Path(ref).name)
    elif is_file and grid_dir is not None and not Path(ref).is_absolute():
        ref = str(grid_dir / ref)
    try:
        suite = load_suite(ref)
    except (ValueError, KeyError, OSError) as err:
        raise GridError(f"{source}: field 'evaluation.{dataset}.suite' = {plan.suite!r}: {err}") from None
    if suite.dataset != dataset:
        raise GridError(
            f"{source}: field 'evaluation.{dataset}.suite' = {plan.suite!r}: the suite is for "
            f"dataset '{suite.dataset}', not '{dataset}'"
        )
    return _suite_with_restarts(suite, plan.restarts), (Path(ref) if is_file else None)


def _group_families(
    name: str, exp: Experiment, suite: Any, source: str
) -> tuple[list[str], list[str]]:
    known = sorted({a.family for a in suite.attacks})
    suite_group = (suite.groups or {}).get(name, {})
    families = exp.families if exp.families is not None else suite_group.get("families")
    affine = exp.affine if exp.affine is not None else suite_group.get("affine", [])
    if not families:
        raise GridError(
            f"{source}: field 'experiments.{name}.families': required (suite '{suite.name}' has no "
            f"group '{name}'); allowed families in that suite: {', '.join(known)}"
        )
    for key, values in (("families", families), ("affine", affine)):
        for fam in values:
            if fam not in known:
                raise GridError(
                    f"{source}: field 'experiments.{name}.{key}' = {fam!r}: suite '{suite.name}' "
                    f"has no attack of that family; allowed: {', '.join(known)}"
                )
    return list(families), list(affine or [])


def expand_grid(grid: Grid, *, source: str = "<grid>", grid_dir: Path | None = None,
                suite_dir: Path | None = None) -> SweepPlan:
    """Expand a grid into distinct trials (deduplicated by model id) and evaluation shards.

    Suite files are found relative to ``grid_dir``, or in ``suite_dir`` when given."""
    from jobs.config import ConfigError, make_train_config
    from jobs.evaluation import plan_shards

    suites: dict[str, Any] = {}
    suite_files: dict[str, Path] = {}
    for dataset, plan in grid.evaluation.items():
        if any(exp.dataset == dataset for exp in grid.experiments.values()):
            suites[dataset], file = _load_suite(plan, dataset=dataset, grid_dir=grid_dir,
                                                source=source, suite_dir=suite_dir)
            if file is not None:
                suite_files[dataset] = file

    groups: dict[str, GroupPlan] = {}
    trials: dict[str, TrialPlan] = {}
    for gname, exp in grid.experiments.items():
        suite = suites[exp.dataset]
        families, affine = _group_families(gname, exp, suite, source)
        group = GroupPlan(gname, exp.dataset, families, affine)
        groups[gname] = group
        for label, entry in exp.models.items():
            for seed in grid.seeds:
                data = {
                    **exp.train,
                    "label": label,
                    "strategy": entry.strategy,
                    "attacks": [exp.attacks[a] for a in entry.attacks],
                    "seed": seed,
                }
                where = f"{source}: experiments.{gname}.models.{label} (seed {seed})"
                try:
                    config = make_train_config(data, source=where)
                except ConfigError as err:
                    raise GridError(str(err)) from None
                mid = config.model_id()
                group.models.append(mid)
                if mid in trials:
                    prev = trials[mid]
                    if prev.label != label:
                        raise GridError(
                            f"{where}: this model is the same training config as '{prev.label}' "
                            f"in group(s) {', '.join(prev.groups)}; one model takes one label: "
                            f"use '{prev.label}' here too"
                        )
                    prev.groups.append(gname)
                    continue
                trials[mid] = TrialPlan(
                    model_id=mid,
                    label=label,
                    dataset=exp.dataset,
                    strategy=entry.strategy,
                    groups=[gname],
                    config=config.to_dict(),
                )

    for label, entry in grid.external.items():
        mid, record = _external_trial(entry, label=label, source=source)
        if mid in trials:
            raise GridError(f"{source}: external.{label} is the same model as "
                            f"'{trials[mid].label}'; one model takes one label")
        trials[mid] = TrialPlan(model_id=mid, label=label, dataset=entry.dataset,
                                strategy=EXTERNAL_STRATEGY, groups=list(entry.groups),
                                config=record)
        for g in entry.groups:
            groups[g].models.append(mid)

    shards: list[Shard] = []
    for mid, trial in trials.items():
        wanted: set[str] = set()
        for g in trial.groups:
            wanted.update(groups[g].families)
            wanted.update(groups[g].affine)
        suite = suites[trial.dataset]
        trial.attacks = [a.name for a in suite.attacks if a.family in wanted]
        plan = grid.evaluation[trial.dataset]
        for attack in trial.attacks:
            for start, stop in plan_shards(plan.n_test, plan.shard_size):
                shards.append(Shard(mid, attack, start, stop))
    return SweepPlan(grid=grid, groups=groups, trials=trials, suites=suites, shards=shards,
                     suite_files=suite_files)


def _external_trial(entry: ExternalEntry, *, label: str, source: str) -> tuple[str, dict[str, Any]]:
    """(model id, config-like record) of an evaluation-only model, its relative paths made
    absolute from the current directory (the trials load it from other processes)."""
    from jobs.external.load import planned
    from jobs.external.spec import ExternalModelError

    try:
        return planned(entry.spec().with_paths_under(Path.cwd()), label=label)
    except ExternalModelError as err:
        raise GridError(f"{source}: external.{label}: {err}") from None


def load_plan(name_or_path: str | os.PathLike[str]) -> tuple[SweepPlan, str, Path]:
    """Load, validate and expand a grid: (plan, the grid file's text, its path)."""
    grid, text, path = load_grid_text(name_or_path)
    return expand_grid(grid, source=str(path), grid_dir=path.parent), text, path
