"""The run folder's records, in one torch-free place: its layout, the manifest of the work
expected, the trial and shard records, and the integrity record of each results file. Read and
written by ``mpo sweep`` (and its resume), ``mpo eval``, ``mpo status``, ``mpo report`` and
``mpo export``; the per-example rows themselves are ``jobs.schema``'s.

Layout::

    RUN_DIR/
      run.json        name, created, versions, git commit, hardware, the command as typed; a
                      sweep's settings (``sweep``) and each driver run (``sweeps``)
      grid.yaml       a sweep's grid as it was at the start;  suites/  the suite files it names
      manifest.json   the work expected: groups, trials (by model id), shards (``Manifest``)
      driver.lock     held by a running sweep driver (``orchestrator.runlock``)
      trials/<model_id>/  config.json, state.pt, checkpoint.pt, metrics.jsonl (jobs.training),
                      trial.json (``TRIAL_FILE``: state, attempts, placements, summary,
                      shard_files, ...), shards/<shard>.json (each run of a shard's task)
      results/<model_id>/<attack>__<start>-<stop>.parquet   the rows (jobs.schema)
      audit/<model_id>/...   the strength audit (``jobs.audit``)
      tune/driver-<n>/   a sweep driver run's Ray Tune folder (a log: nothing reads it back)

The manifest is versioned (``MANIFEST_VERSION``): version 1 is what mpo wrote before it said
(sweeps recorded each trial's attacks, ``mpo eval`` did not); the reader takes both. Every file
is written atomically (``jobs.io``), so a killed process never leaves half a record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobs.errors import MpoError
from jobs.io import file_digest, read_json, write_json_atomic

RUN_FILE = "run.json"
GRID_FILE = "grid.yaml"
SUITES_DIR = "suites"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = "driver.lock"
TRIALS_DIR = "trials"
RESULTS_DIR = "results"
AUDIT_DIR = "audit"
TUNE_DIR = "tune"
TRIAL_FILE = "trial.json"
SHARD_RECORDS_DIR = "shards"

#: 1: written before the manifest said its version; 2: ``version`` recorded, every trial's attacks
MANIFEST_VERSION = 2
#: trial.json's record of its results files when the trial finished:
#: {file name: {"bytes": size, "sha256": hex digest}}
SHARD_FILES = "shard_files"
#: Trial states (from trial.json) that mean the trial did not finish.
FAILED_STATES = frozenset({"error", "errored", "failed", "terminated", "crashed"})


class RunFolderError(MpoError, ValueError):
    """A folder that is not (or not a usable) mpo run folder, or a record in it that cannot be
    read."""


def _read(path: Path) -> Any:
    return read_json(path, error=RunFolderError)


def plan_shards(n_test: int, shard_size: int) -> list[tuple[int, int]]:
    """``[(0, s), (s, 2s), ...]`` covering ``range(n_test)``; the last shard may be shorter."""
    if n_test < 1:
        raise ValueError(f"n_test = {n_test}: must be at least 1")
    if shard_size < 1:
        raise ValueError(f"shard_size = {shard_size}: must be at least 1")
    return [(s, min(s + shard_size, n_test)) for s in range(0, n_test, shard_size)]


def shard_filename(attack: str, start: int, stop: int) -> str:
    """The results file of one attack on test points [start, stop)."""
    return f"{attack}__{start}-{stop}.parquet"


# ----------------------------------------------------------------------------------------------
# The manifest


@dataclass(frozen=True)
class ShardEntry:
    """One expected results file: an attack of a model's suite on test points [start, stop)."""

    model_id: str
    attack: str
    start: int
    stop: int

    @property
    def filename(self) -> str:
        return shard_filename(self.attack, self.start, self.stop)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardEntry:
        return cls(str(data["model_id"]), str(data["attack"]), int(data["start"]), int(data["stop"]))


@dataclass
class TrialEntry:
    """One model of the run (``model_id``, the manifest's key): its label, dataset, strategy
    (``external`` for a model mpo did not train), the groups it is reported in, its config
    snapshot and the suite attacks it is evaluated with (suite order)."""

    model_id: str
    label: str
    dataset: str
    strategy: str
    groups: list[str]
    config: dict[str, Any]
    attacks: list[str] = field(default_factory=list)
    #: the checkpoint ``mpo eval`` evaluated (a sweep's is ``trials/<model_id>/checkpoint.pt``)
    source: str | None = None
    #: the models it needs first (model ids): a fine-tuned model's parent, a soup's ingredients
    parents: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {"label": self.label, "dataset": self.dataset, "strategy": self.strategy,
               "groups": list(self.groups), "attacks": list(self.attacks), "config": self.config}
        if self.parents:
            out["parents"] = list(self.parents)
        return {**out, "source": self.source} if self.source else out

    @classmethod
    def from_dict(cls, model_id: str, data: Mapping[str, Any]) -> TrialEntry:
        return cls(model_id=model_id, label=str(data.get("label", "")), dataset=str(data.get("dataset", "")),
                   strategy=str(data.get("strategy", "")), groups=list(data.get("groups", [])),
                   config=dict(data.get("config") or {}), attacks=list(data.get("attacks", [])),
                   source=data.get("source"), parents=list(data.get("parents", [])))


@dataclass
class GroupEntry:
    """A reporting group (``name``, the manifest's key): its dataset, families (union and
    average are over them), affine families and models (ids)."""

    name: str
    dataset: str
    families: list[str]
    affine: list[str]
    models: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "families": list(self.families),
                "affine": list(self.affine), "models": list(self.models)}

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> GroupEntry:
        return cls(name=name, dataset=str(data.get("dataset", "")), families=list(data.get("families", [])),
                   affine=list(data.get("affine", [])), models=list(data.get("models", [])))


@dataclass
class Manifest:
    """``manifest.json``: the work a run expects. A sweep writes it whole before its first trial
    (``grid``, ``grid_digest`` and ``evaluation`` say what it came from); ``mpo eval`` adds each
    evaluation to it before the first result, so a folder killed part-way says what is missing."""

    groups: dict[str, GroupEntry] = field(default_factory=dict)
    trials: dict[str, TrialEntry] = field(default_factory=dict)
    shards: list[ShardEntry] = field(default_factory=list)
    grid: str | None = None
    grid_digest: str | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version}
        if self.grid is not None:
            out.update(grid=self.grid, grid_digest=self.grid_digest)
        out["groups"] = {g: e.to_dict() for g, e in self.groups.items()}
        if self.evaluation:
            out["evaluation"] = self.evaluation
        out["trials"] = {m: t.to_dict() for m, t in self.trials.items()}
        out["shards"] = [s.to_dict() for s in self.shards]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        return cls(
            groups={str(g): GroupEntry.from_dict(str(g), e)
                    for g, e in (data.get("groups") or {}).items()},
            trials={str(m): TrialEntry.from_dict(str(m), t)
                    for m, t in (data.get("trials") or {}).items()},
            shards=[ShardEntry.from_dict(s) for s in data.get("shards") or ()],
            grid=data.get("grid"), grid_digest=data.get("grid_digest"),
            evaluation=dict(data.get("evaluation") or {}), version=int(data.get("version", 1)),
        )

    def trial_shards(self, model_id: str) -> list[ShardEntry]:
        return [s for s in self.shards if s.model_id == model_id]

    def expected_files(self) -> dict[str, list[str]]:
        """{model_id: the results file names its trial writes}, in the manifest's order."""
        out: dict[str, list[str]] = {mid: [] for mid in self.trials}
        for shard in self.shards:
            out.setdefault(shard.model_id, []).append(shard.filename)
        return out

    def add_evaluation(self, trial: TrialEntry, groups: Iterable[GroupEntry],
                       shards: Iterable[ShardEntry]) -> None:
        """Merge one model's evaluation (``mpo eval``): its groups (the model joins each), its
        trial entry and its shards (each once)."""
        model_id = trial.model_id
        for entry in groups:
            name = entry.name
            group = self.groups.setdefault(name, GroupEntry(name, entry.dataset,
                                                            list(entry.families), list(entry.affine)))
            if model_id not in group.models:
                group.models.append(model_id)
        old = self.trials.get(model_id)
        if old is not None:
            trial.attacks = list(dict.fromkeys([*old.attacks, *trial.attacks]))
        self.trials[model_id] = trial
        seen = set(self.shards)
        self.shards += [s for s in shards if s not in seen]
        self.version = MANIFEST_VERSION


# ----------------------------------------------------------------------------------------------
# The integrity record of results files


def file_records(paths: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
    """Size and sha256 of each results file (``SHARD_FILES``), as a finished trial leaves them:
    later storage faults show as a difference (``differs_from_record``)."""
    return {Path(p).name: {"bytes": Path(p).stat().st_size, "sha256": file_digest(p)} for p in paths}


def differs_from_record(path: Path, recorded: Mapping[str, Any] | None) -> str | None:
    """Why ``path`` is not the file its trial recorded when it finished (``SHARD_FILES``), or
    None (it is, or nothing was recorded). A storage fault can leave a file parquet still reads,
    with wrong values (a damaged data page): only the recorded digest shows it."""
    if not recorded:
        return None
    size = path.stat().st_size
    if size != recorded.get("bytes"):
        return (f"corrupt on disk: {size} bytes, {recorded.get('bytes')} when its trial "
                "finished (truncated or overwritten)")
    if file_digest(path) != recorded.get("sha256"):
        return "corrupt on disk: its contents differ from the sha256 recorded when its trial finished"
    return None


# ----------------------------------------------------------------------------------------------
# The folder


class _Entry:
    """A fixed file or folder of the run folder, read as an attribute: ``rf.run_file``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, rf: RunFolder, owner: type | None = None) -> Path:
        return rf.path / self.name


def check_run_dir(run_dir: Path) -> Path:
    """``run_dir`` when it is a folder (what every reader checks first, before its imports)."""
    if not run_dir.exists():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} is not a directory")
    return run_dir


@dataclass(frozen=True)
class RunFolder:
    """A run folder's paths and records (see the module docstring)."""

    path: Path

    run_file = _Entry(RUN_FILE)
    grid_file = _Entry(GRID_FILE)
    manifest_file = _Entry(MANIFEST_FILE)
    suite_dir = _Entry(SUITES_DIR)
    tune_dir = _Entry(TUNE_DIR)
    audit_dir = _Entry(AUDIT_DIR)

    def trial_dir(self, model_id: str) -> Path:
        return self.path / TRIALS_DIR / model_id

    def results_dir(self, model_id: str) -> Path:
        return self.path / RESULTS_DIR / model_id

    def shard_path(self, shard: ShardEntry) -> Path:
        return self.results_dir(shard.model_id) / shard.filename

    def exists(self) -> bool:
        return self.manifest_file.exists()

    def check(self, *, sweep: bool = False) -> None:
        """Refuse a folder that is not a run folder (for ``sweep``: not a sweep's)."""
        if not self.path.is_dir():
            raise RunFolderError(f"{self.path}: no such run folder")
        needed = (RUN_FILE, GRID_FILE, MANIFEST_FILE) if sweep else (MANIFEST_FILE,)
        missing = [f for f in needed if not (self.path / f).exists()]
        if missing:
            what = ("an mpo sweep run folder (a run folder is --storage/--name of an `mpo sweep`)"
                    if sweep else "an mpo run folder (written by `mpo sweep` or `mpo eval --out`)")
            raise RunFolderError(f"{self.path}: not {what}: missing {', '.join(missing)}")

    def is_sweep(self) -> bool:
        return self.grid_file.exists()

    def manifest(self) -> Manifest:
        return Manifest.from_dict(_read(self.manifest_file))

    def write_manifest(self, manifest: Manifest) -> None:
        write_json_atomic(self.manifest_file, manifest.to_dict())

    def run(self) -> dict[str, Any]:
        return _read(self.run_file)

    def trial_record(self, model_id: str) -> dict[str, Any]:
        """trials/<model_id>/trial.json ({} when there is none, or it cannot be read)."""
        try:
            return _read(self.trial_dir(model_id) / TRIAL_FILE)
        except RunFolderError:
            return {}

    def update_trial(self, model_id: str, /, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into trials/<model_id>/trial.json (one writer at a time: the trial's
        trainable, or the driver before it starts the trials)."""
        record = self.trial_record(model_id)
        record.update(fields)
        write_json_atomic(self.trial_dir(model_id) / TRIAL_FILE, record)
        return record

    def shard_record_path(self, model_id: str, filename: str) -> Path:
        return self.trial_dir(model_id) / SHARD_RECORDS_DIR / f"{Path(filename).stem}.json"

    def shard_runs(self, model_id: str, filename: str) -> list[dict[str, Any]]:
        """The runs of a shard's task so far, oldest first (``note_shard_run``)."""
        try:
            return list(_read(self.shard_record_path(model_id, filename)).get("runs", []))
        except RunFolderError:
            return []

    def note_shard_run(self, model_id: str, filename: str, run: str, /, **fields: Any) -> None:
        """Add ``fields`` to the run ``run`` of a shard's task (created at its first note): a
        task notes where it runs before it starts, so a run lost with its node stays on record
        without an end. One writer at a time: a shard's task runs once at a time."""
        runs = self.shard_runs(model_id, filename)
        entry = next((r for r in runs if r.get("run") == run), None)
        if entry is None:
            runs.append({"run": run, **fields})
        else:
            entry.update(fields)
        write_json_atomic(self.shard_record_path(model_id, filename), {"runs": runs})


def epochs_done(trial_dir: Path) -> int:
    """Epochs a trial's metrics.jsonl records."""
    metrics = trial_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0
    return sum(1 for line in metrics.read_text().splitlines() if line.strip())
