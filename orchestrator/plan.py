"""A grid expanded into the work of a sweep: groups, one trial per distinct model, their suites
and evaluation shards, and the payload each trial gets.

Expansion builds a ``TrainConfig`` per (model, seed); identical configs (same ``model_id``) in
several groups are one trial that is evaluated for all of them (Nat shared by ``mnist-lp`` and
``mnist-rt`` is trained once). An external model is one trial (seeds do not apply). The plan's
``manifest()`` is the run folder's ``jobs.run_folder.Manifest``; ``payload(model_id)`` is what
the trial's trainable receives (``TrialPayload``: its shards given, never recomputed there).
Nothing here imports Ray or torch (an external model's factory is imported to check it).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.external import EXTERNAL_STRATEGY
from jobs.run_folder import GroupEntry, Manifest, ShardEntry, TrialEntry, plan_shards
from orchestrator.grid import (
    GRID_SUFFIXES,
    EvaluationPlan,
    Experiment,
    ExternalEntry,
    Grid,
    GridError,
    load_grid_text,
)

if TYPE_CHECKING:
    from jobs.suite import EvalSuite


@dataclass(frozen=True)
class TrialPayload:
    """What one trial's trainable gets: its model, the groups it is reported in
    ({group: {"families", "affine"}}), its suite and the shards it evaluates."""

    model_id: str
    label: str
    dataset: str
    groups: dict[str, dict[str, list[str]]]
    config: dict[str, Any]
    suite: EvalSuite
    shards: tuple[ShardEntry, ...]
    n_test: int = 0
    #: the strength audit to run after the evaluation (``jobs.audit.AuditRequest``'s fields)
    audit: dict[str, Any] | None = None

    @property
    def epochs(self) -> int:
        return math.ceil(float(self.config.get("epochs") or 0))  # epochs the loop runs


@dataclass
class SweepPlan:
    """A grid expanded: groups, distinct trials (keyed by model id), suites and shards."""

    grid: Grid
    groups: dict[str, GroupEntry]
    trials: dict[str, TrialEntry]
    suites: dict[str, EvalSuite]  # dataset -> its suite (restarts applied)
    shards: list[ShardEntry]
    suite_files: dict[str, Path] = field(default_factory=dict)  # dataset -> suite file (not built-in)

    def trial_shards(self, model_id: str) -> list[ShardEntry]:
        return [s for s in self.shards if s.model_id == model_id]

    def trial_groups(self, model_id: str) -> dict[str, dict[str, list[str]]]:
        """{group: {"families", "affine"}} for the groups a trial is reported in."""
        return {g: {"families": list(self.groups[g].families), "affine": list(self.groups[g].affine)}
                for g in self.trials[model_id].groups}

    def payload(self, model_id: str) -> TrialPayload:
        t = self.trials[model_id]
        ev = self.grid.evaluation[t.dataset]
        return TrialPayload(model_id=model_id, label=t.label, dataset=t.dataset,
                            groups=self.trial_groups(model_id), config=t.config,
                            suite=self.suites[t.dataset], shards=tuple(self.trial_shards(model_id)),
                            n_test=ev.n_test,
                            audit=ev.audit.model_dump() if ev.audit is not None else None)

    def manifest(self) -> Manifest:
        evaluation = {ds: {**plan.model_dump(mode="json"), "suite_name": self.suites[ds].name}
                      for ds, plan in self.grid.evaluation.items() if ds in self.suites}
        return Manifest(groups=self.groups, trials=self.trials, shards=self.shards,
                        grid=self.grid.name, grid_digest=self.grid.digest(), evaluation=evaluation)


# ----------------------------------------------------------------------------------------------
# Suites


def _suite_with_restarts(suite: EvalSuite, restarts: int | None) -> EvalSuite:
    """A copy of ``suite`` whose attacks with random restarts (l_p and affine) use ``restarts``."""
    if restarts is None:
        return suite
    attacks = [dataclasses.replace(att, spec=att.spec.with_restarts(restarts)) for att in suite.attacks]
    return dataclasses.replace(suite, attacks=attacks)


def _load_suite(plan: EvaluationPlan, *, dataset: str, grid_dir: Path | None, source: str,
                suite_dir: Path | None = None) -> tuple[EvalSuite, Path | None]:
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


def _suites(grid: Grid, source: str, grid_dir: Path | None,
            suite_dir: Path | None) -> tuple[dict[str, EvalSuite], dict[str, Path]]:
    """The suite of every dataset a group trains on, and the suite files that are not built in."""
    suites: dict[str, EvalSuite] = {}
    files: dict[str, Path] = {}
    for dataset, plan in grid.evaluation.items():
        if any(exp.dataset == dataset for exp in grid.experiments.values()):
            suites[dataset], file = _load_suite(plan, dataset=dataset, grid_dir=grid_dir,
                                                source=source, suite_dir=suite_dir)
            if file is not None:
                files[dataset] = file
    return suites, files


def _group_families(name: str, exp: Experiment, suite: EvalSuite,
                    source: str) -> tuple[list[str], list[str]]:
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


# ----------------------------------------------------------------------------------------------
# Trials


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s fields, mappings merged one level down (optimizer: {lr: ...})."""
    out = dict(base)
    for key, value in over.items():
        out[key] = ({**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict)
                    else value)
    return out


def _init(grid: Grid, group: str, label: str, seed: int,
          ids: dict[tuple[str, str, int], str]) -> dict[str, Any] | None:
    """A grid model's ``init`` as its TrainConfig takes it: a grid parent by its model id."""
    entry = grid.experiments[group].models[label]
    if entry.init is None:
        return None
    parent = grid.parent_of(group, label)
    if parent is None:  # {checkpoint: ...} or {external: ...}: paths relative to the cwd
        init = dict(entry.init)  # type: ignore[arg-type]
        if init.get("checkpoint") and not Path(init["checkpoint"]).is_absolute():
            init["checkpoint"] = str(Path.cwd() / init["checkpoint"])
        if init.get("external"):
            from jobs.external import parse_external

            spec = parse_external(init["external"], source="init.external")
            init["external"] = spec.with_paths_under(Path.cwd()).model_dump(
                mode="json", exclude_defaults=True)
        return init
    return {"model": entry.init, "parent": ids[(*parent, seed)]}


def _trained(grid: Grid, suites: dict[str, EvalSuite], source: str,
             ) -> tuple[dict[str, GroupEntry], dict[str, TrialEntry]]:
    """The groups and the trained models' trials (one per distinct model id), parents first."""
    from jobs.config import ConfigError, make_train_config
    from jobs.finetune import check_parent, resolve_init

    groups: dict[str, GroupEntry] = {}
    trials: dict[str, TrialEntry] = {}
    ids: dict[tuple[str, str, int], str] = {}
    members: dict[str, list[tuple[str, int, str]]] = {}
    for gname, exp in grid.experiments.items():
        families, affine = _group_families(gname, exp, suites[exp.dataset], source)
        groups[gname] = GroupEntry(gname, exp.dataset, families, affine)
        members[gname] = []
    for gname, label in grid.lineage():
        exp = grid.experiments[gname]
        entry = exp.models[label]
        for seed in grid.seeds:
            data = {**_merged(exp.train, entry.train), "label": label, "strategy": entry.strategy,
                    "attacks": [exp.attacks[a] for a in entry.attacks], "seed": seed}
            where = f"{source}: experiments.{gname}.models.{label} (seed {seed})"
            try:
                init = _init(grid, gname, label, seed, ids)
                if init is not None:
                    data["init"] = init
                config = resolve_init(make_train_config(data, source=where), source=where)
                parent = grid.parent_of(gname, label)
                if parent is not None:
                    check_parent(config, trials[ids[(*parent, seed)]].config,
                                 parent_name=f"'{parent[1]}' (experiments.{parent[0]})",
                                 source=where)
            except ConfigError as err:
                raise GridError(str(err)) from None
            mid = ids[(gname, label, seed)] = config.model_id()
            members[gname].append((label, seed, mid))
            prev = trials.get(mid)
            if prev is None:
                parents = [config.init.parent] if config.init and config.init.model else []
                trials[mid] = TrialEntry(mid, label, exp.dataset, entry.strategy, [gname],
                                         config.to_dict(), parents=parents)
            elif prev.label != label:
                raise GridError(
                    f"{where}: this model is the same training config as '{prev.label}' "
                    f"in group(s) {', '.join(prev.groups)}; one model takes one label: "
                    f"use '{prev.label}' here too"
                )
            elif gname not in prev.groups:
                prev.groups.append(gname)
    for gname, exp in grid.experiments.items():  # the group's models in the grid's order
        order = {label: i for i, label in enumerate(exp.models)}
        for _, _, mid in sorted(members[gname], key=lambda m: (order[m[0]], grid.seeds.index(m[1]))):
            groups[gname].models.append(mid)
    _add_soups(grid, groups, trials, ids, source)
    return groups, trials


def _add_soups(grid: Grid, groups: dict[str, GroupEntry], trials: dict[str, TrialEntry],
               ids: dict[tuple[str, str, int], str], source: str) -> None:
    """One evaluation-only trial per soup (family, weight vector, seed), after its ingredients."""
    from jobs.soup import SOUP_STRATEGY, soup_record

    for gname, exp in grid.experiments.items():
        for family, soup in exp.soups.items():
            for seed in grid.seeds:
                ingredients = [ids[(gname, label, seed)] for label in soup.models]
                first = trials[ingredients[0]]
                for label, mid in zip(soup.models[1:], ingredients[1:], strict=True):
                    other = trials[mid].config
                    for key in ("dataset", "model"):
                        if other[key] != first.config[key]:
                            raise GridError(
                                f"{source}: experiments.{gname}.soups.{family}: ingredient "
                                f"'{label}' has {key} {other[key]}, '{soup.models[0]}' has "
                                f"{first.config[key]}: a soup's ingredients share one "
                                "architecture and dataset")
                for weights in soup.vectors():
                    record = soup_record(family=family, ingredients=ingredients,
                                         labels=list(soup.models), weights=weights,
                                         config=first.config)
                    mid = record["soup"]["model_id"]
                    if mid not in trials:
                        trials[mid] = TrialEntry(mid, record["label"], exp.dataset, SOUP_STRATEGY,
                                                 [gname], record, parents=list(ingredients))
                    elif gname not in trials[mid].groups:
                        trials[mid].groups.append(gname)
                    groups[gname].models.append(mid)


def _external_trial(entry: ExternalEntry, *, label: str, source: str) -> tuple[str, dict[str, Any]]:
    """(model id, config-like record) of an evaluation-only model, its relative paths made
    absolute from the current directory (the trials load it from other processes)."""
    from jobs.external.load import planned
    from jobs.external.spec import ExternalModelError

    try:
        return planned(entry.spec().with_paths_under(Path.cwd()), label=label)
    except ExternalModelError as err:
        raise GridError(f"{source}: external.{label}: {err}") from None


def _add_external(grid: Grid, groups: dict[str, GroupEntry], trials: dict[str, TrialEntry],
                  source: str) -> None:
    for label, entry in grid.external.items():
        mid, record = _external_trial(entry, label=label, source=source)
        if mid in trials:
            raise GridError(f"{source}: external.{label} is the same model as "
                            f"'{trials[mid].label}'; one model takes one label")
        trials[mid] = TrialEntry(mid, label, entry.dataset, EXTERNAL_STRATEGY, list(entry.groups),
                                 record)
        for g in entry.groups:
            groups[g].models.append(mid)


def _check_affine_only(trial: TrialEntry, suite: EvalSuite, source: str) -> None:
    """Refuse a trained model that is not affine where its suite has an attack only affine
    models take (the exact attack), before any work."""
    from jobs.model_names import AFFINE_MODEL_NAMES

    name = (trial.config.get("model") or {}).get("name")
    if name is None or name in AFFINE_MODEL_NAMES:
        return
    only = [a.base for a in suite.attacks if a.name in trial.attacks and a.spec.affine_models_only]
    if only:
        raise GridError(
            f"{source}: experiments.{trial.groups[0]}.models.{trial.label}: model '{name}' is "
            f"not affine, but the suite '{suite.name}' (evaluation.{trial.dataset}.suite) has the attack "
            f"'{only[0]}' of type 'exact', which only models affine in their input take "
            f"({', '.join(AFFINE_MODEL_NAMES)}); evaluate it with a suite without exact attacks"
            + (" (for toy: suite: toy-nonlinear)" if trial.dataset == "toy" else "")
        )


def _shards(grid: Grid, groups: dict[str, GroupEntry], trials: dict[str, TrialEntry],
            suites: dict[str, EvalSuite], source: str) -> list[ShardEntry]:
    """Each trial's suite attacks (of its groups' families, suite order) and their shards."""
    shards: list[ShardEntry] = []
    for mid, trial in trials.items():
        wanted = {f for g in trial.groups for f in (*groups[g].families, *groups[g].affine)}
        trial.attacks = [a.name for a in suites[trial.dataset].attacks if a.family in wanted]
        _check_affine_only(trial, suites[trial.dataset], source)
        plan = grid.evaluation[trial.dataset]
        ranges = plan_shards(plan.n_test, plan.shard_size)
        shards += [ShardEntry(mid, attack, start, stop) for attack in trial.attacks
                   for start, stop in ranges]
    return shards


def expand_grid(grid: Grid, *, source: str = "<grid>", grid_dir: Path | None = None,
                suite_dir: Path | None = None) -> SweepPlan:
    """Expand a grid into distinct trials (deduplicated by model id) and evaluation shards.

    Suite files are found relative to ``grid_dir``, or in ``suite_dir`` when given."""
    suites, suite_files = _suites(grid, source, grid_dir, suite_dir)
    groups, trials = _trained(grid, suites, source)
    _add_external(grid, groups, trials, source)
    shards = _shards(grid, groups, trials, suites, source)
    return SweepPlan(grid=grid, groups=groups, trials=trials, suites=suites, shards=shards,
                     suite_files=suite_files)


def load_plan(name_or_path: str | os.PathLike[str]) -> tuple[SweepPlan, str, Path]:
    """Load, validate and expand a grid: (plan, the grid file's text, its path)."""
    grid, text, path = load_grid_text(name_or_path)
    return expand_grid(grid, source=str(path), grid_dir=path.parent), text, path
