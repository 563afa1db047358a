"""Read a run folder into a ``ResultSet``: the per-example rows plus what was expected.

Only the per-example parquet files are read for metrics (``results/<model_id>/*.parquet``);
``manifest.json`` (when present) says which groups, trials and shards were expected, so that
missing work is listed instead of silently dropped. Without a manifest, groups and models are
inferred from the parquet metadata (``mpo.suite``) and the rows' ``groups`` column.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.audit import load_audit
from analysis.model_info import ModelInfo
from analysis.suite_meta import SuiteInfo, parse_suite_info
from jobs.errors import MpoError
from jobs.io import read_json, read_text
from jobs.run_folder import (
    MANIFEST_FILE,
    SHARD_FILES,
    Manifest,
    RunFolderError,
    check_run_dir,
    differs_from_record,
)
from jobs.schema import (
    ADDED_COLUMNS,
    COLUMNS,
    META_MODEL,
    META_SHARD,
    META_SUITE,
    SchemaVersionError,
    check_schema_version,
    upgrade,
)
from jobs.strategy_table import LABEL_ORDER, STRATEGIES

#: Row order of the training strategies (``jobs.strategy_table``'s); others follow.
STRATEGY_ORDER = tuple(STRATEGIES)


@dataclass(frozen=True)
class Group:
    """A reporting group: models compared on the same perturbation families."""

    name: str
    dataset: str
    families: tuple[str, ...]
    affine: tuple[str, ...] = ()
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class MissingShard:
    model_id: str
    attack: str
    start: int
    stop: int
    reason: str


@dataclass
class ResultSet:
    """All per-example rows of a run plus the run's expectations and metadata.

    ``rows`` has the columns of ``jobs.schema.SCHEMA``; ``groups`` and ``models`` are keyed by
    name and model id. ``missing_trials`` are expected model ids with no results at all.
    """

    run_dir: Path
    rows: pd.DataFrame
    groups: dict[str, Group]
    models: dict[str, ModelInfo]
    run: dict[str, Any] = field(default_factory=dict)
    grid_text: str | None = None
    manifest: Manifest | None = None
    skipped_files: list[SkippedFile] = field(default_factory=list)
    missing_shards: list[MissingShard] = field(default_factory=list)
    missing_trials: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    suites: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the suites' metadata read into ``SuiteInfo`` (same keys as ``suites``)
    suite_info: dict[str, SuiteInfo] = field(default_factory=dict)
    #: the strength audit's rows (``analysis.audit``), None when the run was not audited
    audit: pd.DataFrame | None = None

    def group_suites(self, group: str) -> list[SuiteInfo]:
        """The suites the group's models were evaluated with (usually one)."""
        names = self.rows.loc[self.rows["model_id"].isin(self.groups[group].models), "suite"]
        return [self.suite_info[s] for s in dict.fromkeys(names) if s in self.suite_info]

    def models_in(self, group: str) -> list[ModelInfo]:
        """The group's models that have results, in the paper's row order."""
        ids = self.groups[group].models
        found = [self.models[m] for m in ids if m in self.models and self.models[m].has_results]
        return sorted(found, key=model_sort_key)

    @property
    def failed_trials(self) -> list[ModelInfo]:
        return [m for m in self.models.values() if m.failed]

    def incomplete_models(self) -> set[str]:
        """Model ids with missing shards or skipped (unreadable, damaged) results files: their
        worst case may be optimistic."""
        return {s.model_id for s in self.missing_shards} | {
            f.path.parent.name for f in self.skipped_files}


def short_id(model_id: str) -> str:
    """The part of a model id that tells two models apart: its hash (``toy-max-linf_l1-da748b3a``
    -> ``da748b3a``; every id of a dataset and strategy shares the rest)."""
    return model_id.rsplit("-", 1)[-1]


def _rank(order: tuple[str, ...], value: str) -> int:
    return order.index(value) if value in order else len(order)


def model_sort_key(model: ModelInfo) -> tuple[int, int, str, int, str]:
    """Rows by strategy (``STRATEGY_ORDER``, unknown strategies last), then label."""
    return (_rank(STRATEGY_ORDER, model.strategy), _rank(LABEL_ORDER, model.label), model.label,
            model.seed if model.seed is not None else -1, model.model_id)


def _read_optional_json(path: Path, warnings: list[str]) -> Any:
    """The JSON content of ``path``; None (and a warning) when it is absent or unreadable: a
    run folder's records only add to the results, so a broken one is listed, not fatal."""
    if not path.exists():
        return None
    try:
        return read_json(path, error=RunFolderError)
    except RunFolderError as exc:
        warnings.append(f"could not read {exc}")
        return None


def _json_list(text: object) -> tuple[str, ...]:
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ()
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError:
        return (str(text),)
    if isinstance(value, str):
        return (value,)
    out = []
    for item in value or ():
        if isinstance(item, dict):
            out.append(str(item.get("family", item.get("name", ""))))
        else:
            out.append(str(item))
    return tuple(out)


def _suite_groups(suite: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """Normalise ``mpo.suite``'s groups: {group: [families]} with an optional top-level
    ``affine`` {group: [affine families]} (what jobs.evaluation writes), or
    {group: {"families": [...], "affine": [...]}}."""
    out: dict[str, dict[str, list[str]]] = {}
    affine = suite.get("affine") if isinstance(suite.get("affine"), dict) else {}
    for name, spec in (suite.get("groups") or {}).items():
        if isinstance(spec, dict):
            out[name] = {
                "families": list(spec.get("families", [])),
                "affine": list(spec.get("affine", [])),
            }
        else:
            out[name] = {"families": list(spec), "affine": list(affine.get(name, []))}
    return out


def _read_shard(path: Path, run_dir: Path) -> tuple[pa.Table | None, dict[str, Any], str | None]:
    """Read one results file; return (table, metadata dict, reason it was skipped or None)."""
    rel = str(path.relative_to(run_dir))
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        return None, {}, f"unreadable parquet file ({exc})"
    try:
        check_schema_version(schema.metadata, path=rel)
    except SchemaVersionError as exc:
        return None, {}, str(exc).removeprefix(f"{rel}: ")
    except ValueError as exc:
        return None, {}, f"bad schema version metadata ({exc})"
    missing = [name for name in COLUMNS if name not in schema.names and name not in ADDED_COLUMNS]
    if missing:
        return None, {}, f"missing columns {missing}"
    meta: dict[str, Any] = {}
    for key, name in ((META_MODEL, "model"), (META_SUITE, "suite"), (META_SHARD, "shard")):
        raw = schema.metadata.get(key)
        try:
            meta[name] = json.loads(raw.decode()) if raw else {}
        except json.JSONDecodeError:
            meta[name] = {}
    try:
        table = upgrade(pq.read_table(path, columns=[n for n in COLUMNS if n in schema.names]))
    except (OSError, pa.ArrowException) as exc:
        return None, {}, f"unreadable parquet file ({exc})"
    return table, meta, None


def load_results(run_dir: str | Path) -> ResultSet:
    """Load every results file of ``run_dir`` (see the module docstring for the layout).

    Raises ``RunFolderError`` when the folder does not exist, is empty, or has no readable
    results; files of another schema version are skipped and listed in ``skipped_files``.
    """
    run_dir = check_run_dir(Path(run_dir))
    warnings: list[str] = []
    manifest_data = _read_optional_json(run_dir / MANIFEST_FILE, warnings)
    manifest = Manifest.from_dict(manifest_data) if isinstance(manifest_data, dict) else None
    files = sorted((run_dir / "results").glob("**/*.parquet"))
    if not files and manifest is None:
        raise RunFolderError(
            f"run folder {run_dir} has no results: expected results/<model_id>/*.parquet "
            "(written by `mpo sweep` or `mpo eval --out`) and found none, and no manifest.json"
        )
    shards = _read_shards(files, run_dir, warnings)
    if not shards.tables and manifest is None:
        listing = "; ".join(f"{s.path.relative_to(run_dir)}: {s.reason}" for s in shards.skipped)
        raise RunFolderError(f"run folder {run_dir} has no readable results: {listing}")
    if not shards.tables:
        warnings.append(f"no readable results in {run_dir / 'results'}; every expected shard is missing")
    rows = _concat_rows(shards.tables, warnings)
    models = _collect_models(rows, shards.model_meta, manifest, run_dir, warnings)
    missing_trials, missing_shards = _missing_work(manifest, models, shards)
    run = _read_optional_json(run_dir / "run.json", warnings)
    grid_path = run_dir / "grid.yaml"
    suite_info = {name: parse_suite_info(suite, warnings) for name, suite in shards.suites.items()}
    return ResultSet(
        run_dir=run_dir,
        rows=rows,
        groups=_collect_groups(rows, shards.suite_groups, manifest, models),
        models=models,
        run=run if isinstance(run, dict) else {},
        grid_text=read_text(grid_path, error=RunFolderError) if grid_path.exists() else None,
        manifest=manifest,
        skipped_files=shards.skipped,
        missing_shards=missing_shards,
        missing_trials=missing_trials,
        warnings=warnings,
        suites=shards.suites,
        suite_info=suite_info,
        audit=load_audit(run_dir, warnings),
    )


ShardKey = tuple[str, str, int, int]  # (model_id, attack, start, stop)


@dataclass
class _Shards:
    """What the readable results files hold, and which files were skipped and why."""

    tables: list[pa.Table] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    #: (model_id, file stem) -> why that file was skipped
    skipped_names: dict[tuple[str, str], str] = field(default_factory=dict)
    loaded: set[ShardKey] = field(default_factory=set)
    model_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    suite_groups: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    suites: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, table: pa.Table, meta: dict[str, Any], model_dir: str) -> None:
        """Record one readable file: its rows, its model's config, its shard and its suite."""
        self.tables.append(table)
        shard = meta.get("shard") or {}
        for model_id in set(table.column("model_id").to_pylist()) or {model_dir}:
            self.model_meta.setdefault(model_id, meta.get("model") or {})
            if {"attack", "start", "stop"} <= shard.keys():
                self.loaded.add(
                    (model_id, str(shard["attack"]), int(shard["start"]), int(shard["stop"]))
                )
        suite = meta.get("suite") or {}
        self.suites.setdefault(str(suite.get("name", "")), suite)
        for name, spec in _suite_groups(suite).items():
            known = self.suite_groups.setdefault(name, {"families": [], "affine": []})
            for key in ("families", "affine"):
                known[key] += [f for f in spec[key] if f not in known[key]]


def _recorded_files(run_dir: Path, model_dir: str) -> dict[str, Any]:
    """The trial's ``SHARD_FILES`` record ({} without one; a broken trial.json is warned about
    where the trial folder is read)."""
    try:
        record = read_json(run_dir / "trials" / model_dir / "trial.json")
    except MpoError:
        return {}
    files = record.get(SHARD_FILES) if isinstance(record, dict) else None
    return files if isinstance(files, dict) else {}


def _read_shards(files: list[Path], run_dir: Path, warnings: list[str]) -> _Shards:
    shards = _Shards()
    recorded: dict[str, dict[str, Any]] = {}
    for path in files:
        model_dir = path.parent.name
        if model_dir not in recorded:
            recorded[model_dir] = _recorded_files(run_dir, model_dir)
        reason = differs_from_record(path, recorded[model_dir].get(path.name))
        table, meta, reason = (None, {}, reason) if reason else _read_shard(path, run_dir)
        if reason is not None:
            shards.skipped.append(SkippedFile(path, reason))
            shards.skipped_names[(path.parent.name, path.stem)] = reason
            continue
        assert table is not None
        if table.num_rows == 0:
            warnings.append(f"{path.relative_to(run_dir)}: no rows")
        shards.add(table, meta, path.parent.name)
    return shards


def _concat_rows(tables: list[pa.Table], warnings: list[str]) -> pd.DataFrame:
    """One frame of every row (the schema's columns even when there are none); a row read twice
    (same model, attack, budget and input) is kept once, from the last file read."""
    if tables:
        rows = pa.concat_tables(tables).to_pandas()
    else:
        rows = pa.Table.from_pylist([], schema=pa.schema([(n, t) for n, (t, _) in COLUMNS.items()]))
        rows = rows.to_pandas()
    before = len(rows)
    rows = rows.drop_duplicates(["model_id", "attack", "budget", "index"], keep="last")
    if len(rows) < before:
        warnings.append(
            f"{before - len(rows)} duplicate rows (same model, attack, budget and input) "
            "were dropped, keeping the last file read"
        )
    return rows.reset_index(drop=True)


def _missing_work(
    manifest: Manifest | None, models: dict[str, ModelInfo], shards: _Shards
) -> tuple[list[str], list[MissingShard]]:
    """The manifest's trials with no results at all, and its shards with no results file."""
    if manifest is None:
        return [], []
    missing_trials = [m for m in manifest.trials if not models.get(m, ModelInfo(m, "")).has_results]
    missing_shards: list[MissingShard] = []
    for shard in manifest.shards:
        key = (shard.model_id, shard.attack, shard.start, shard.stop)
        # A trial with no results at all is listed once, as a missing trial.
        if key in shards.loaded or key[0] in missing_trials:
            continue
        stem = Path(shard.filename).stem
        reason = shards.skipped_names.get((key[0], stem), "no results file")
        missing_shards.append(MissingShard(*key, reason=reason))
    return missing_trials, missing_shards


def _collect_models(
    rows: pd.DataFrame,
    model_meta: dict[str, dict[str, Any]],
    manifest: Manifest | None,
    run_dir: Path,
    warnings: list[str],
) -> dict[str, ModelInfo]:
    """Every model the run knows of: from the rows, then the manifest's trials, then the trial
    folders (state, wall time, config), each adding what the earlier ones lack."""
    models = _models_from_rows(rows, model_meta)
    for model_id, trial in (manifest.trials if manifest is not None else {}).items():
        info = models.get(model_id)
        if info is None:
            info = models[model_id] = ModelInfo(
                model_id=model_id, label=trial.label or model_id, dataset=trial.dataset,
                strategy=trial.strategy, groups=tuple(trial.groups))
        if not info.config and trial.config:
            info.config = trial.config
    trials_dir = run_dir / "trials"
    if trials_dir.is_dir():
        for trial_dir in sorted(p for p in trials_dir.iterdir() if p.is_dir()):
            info = models.get(trial_dir.name)
            if info is None:
                info = models[trial_dir.name] = ModelInfo(trial_dir.name, trial_dir.name)
            _add_trial_folder(info, trial_dir, warnings)
    return models


def _models_from_rows(
    rows: pd.DataFrame, model_meta: dict[str, dict[str, Any]]
) -> dict[str, ModelInfo]:
    models: dict[str, ModelInfo] = {}
    if not len(rows):
        return models
    for model_id, row in rows.groupby("model_id", sort=False).first().iterrows():
        models[str(model_id)] = ModelInfo(
            model_id=str(model_id),
            label=str(row["model_label"]),
            dataset=str(row["dataset"]),
            strategy=str(row["strategy"]),
            train_families=_json_list(row["train_attacks"]),
            groups=_json_list(row["groups"]),
            seed=int(row["seed"]) if pd.notna(row["seed"]) else None,
            config=model_meta.get(str(model_id), {}),
            has_results=True,
            train_cost=_cost_record(model_meta.get(str(model_id), {}).get("train_cost")),
        )
    return models


def _cost_record(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _add_trial_folder(info: ModelInfo, trial_dir: Path, warnings: list[str]) -> None:
    """The trial's state, wall time and training cost (trial.json), and its config when no
    other source had it (the results metadata's cost, when there is one, is the one kept)."""
    if (trial_dir / "trial.json").exists():
        data = _read_optional_json(trial_dir / "trial.json", warnings) or {}
        info.state = None if data.get("state") is None else str(data["state"])
        wall = data.get("wall_seconds")
        info.wall_seconds = float(wall) if isinstance(wall, (int, float)) else None
        info.train_cost = info.train_cost or _cost_record(data.get("train_cost"))
    if not info.config:
        info.config = _read_optional_json(trial_dir / "config.json", warnings) or {}


def _collect_groups(
    rows: pd.DataFrame,
    suite_groups: dict[str, dict[str, list[str]]],
    manifest: Manifest | None,
    models: dict[str, ModelInfo],
) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    if manifest is not None and manifest.groups:
        return {name: Group(name=name, dataset=g.dataset, families=tuple(g.families),
                            affine=tuple(g.affine), models=tuple(g.models))
                for name, g in manifest.groups.items()}
    members: dict[str, list[str]] = {}
    for info in models.values():
        for g in info.groups:
            members.setdefault(g, []).append(info.model_id)
    for name in sorted(set(suite_groups) | set(members)):
        ids = tuple(members.get(name, ()))
        spec = suite_groups.get(name)
        sub = rows[rows["model_id"].isin(ids)]
        if spec is None or not spec["families"]:
            present = sorted(set(sub.loc[sub["budget"] == 1.0, "family"]))
            spec = {"families": [f for f in present if "+" not in f], "affine": []}
        affine = list(spec["affine"])
        if not affine:
            fams = set(spec["families"])
            affine = sorted(
                f for f in set(sub["family"]) if "+" in f and set(f.split("+")) <= fams
            )
        datasets = sorted({models[m].dataset for m in ids if models[m].dataset})
        groups[name] = Group(
            name=name,
            dataset=datasets[0] if datasets else "",
            families=tuple(spec["families"]),
            affine=tuple(affine),
            models=ids,
        )
    return groups
