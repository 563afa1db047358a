"""The run folder a sweep writes: its layout, creating it, resuming it, and reading it back
without Ray (``mpo status``).

Layout (``RUN_DIR`` = ``--storage``/``--name``)::

    RUN_DIR/
      run.json        {name, created, mpo_version, git_commit, versions{torch,ray,python},
                       hardware, command, sweep{settings: resources, retries, data_dir, ...},
                       sweeps[{started, finished, wall_seconds, resume, trials_run,
                               interrupted, trial_states}]}
      grid.yaml       the grid file as it was when the sweep started
      suites/         copies of the suite files the grid names (built-in suites are not copied)
      manifest.json   the expected work: groups, trials (by model id) and shards
      driver.lock     held by the running driver (``orchestrator.runlock``)
      trials/<model_id>/  config.json, state.pt, checkpoint.pt, metrics.jsonl (jobs.training),
                          trial.json {state, attempts, placements, epoch_runs, summary,
                                      shard_files, failed_shards, error, ...} (the trainable),
                          shards/<attack>__<start>-<stop>.json  where each run of the shard's
                                      task ran (node, pid, resources) and whether it computed
      results/<model_id>/<attack>__<start>-<stop>.parquet   (jobs.evaluation; jobs.schema)
      tune/driver-<n>/   Ray Tune's experiment folder of the n-th driver run (a log: resuming
                          reads the files above, not Tune's state)

The files are the truth about what is done: a trial is finished when its trial.json says
``done`` and every one of its results files is present and intact (``shard_problems``);
``prepare_resume`` picks the trials a resumed driver runs again. Every file is written through
``jobs.io`` (atomic), except the lock (``orchestrator.runlock``). No Ray.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobs.errors import MpoError
from jobs.io import load_yaml, read_json, run_record, write_json_atomic, write_text_atomic
from orchestrator import fault_injection, runlock
from orchestrator.grid import Shard, SweepPlan, expand_grid, load_grid_text, parse_grid
from orchestrator.resources import Resources, SweepError

RUN_FILE = "run.json"
GRID_FILE = "grid.yaml"
MANIFEST_FILE = "manifest.json"
TRIALS_DIR = "trials"
RESULTS_DIR = "results"
TUNE_DIR = "tune"
SUITES_DIR = "suites"
TRIAL_FILE = "trial.json"
SHARD_RECORDS_DIR = "shards"


class RunDirError(MpoError, ValueError):
    """A folder that is not (or not a usable) mpo run folder."""


def _read(path: Path) -> Any:
    return read_json(path, error=RunDirError)


class _Entry:
    """A fixed file or folder of the run folder, read as an attribute: ``rd.run_file``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, rd: RunDir, owner: type | None = None) -> Path:
        return rd.path / self.name


@dataclass(frozen=True)
class RunDir:
    path: Path

    run_file = _Entry(RUN_FILE)
    grid_file = _Entry(GRID_FILE)
    manifest_file = _Entry(MANIFEST_FILE)
    suite_dir = _Entry(SUITES_DIR)
    tune_dir = _Entry(TUNE_DIR)

    def trial_dir(self, model_id: str) -> Path:
        return self.path / TRIALS_DIR / model_id

    def results_dir(self, model_id: str) -> Path:
        return self.path / RESULTS_DIR / model_id

    def exists(self) -> bool:
        return self.manifest_file.exists()

    def check(self) -> None:
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: no such run folder")
        missing = [f for f in (RUN_FILE, GRID_FILE, MANIFEST_FILE) if not (self.path / f).exists()]
        if missing:
            raise RunDirError(
                f"{self.path}: not an mpo sweep run folder (missing {', '.join(missing)}); "
                "a run folder is --storage/--name of an `mpo sweep`"
            )

    def manifest(self) -> dict[str, Any]:
        return _read(self.manifest_file)

    def run(self) -> dict[str, Any]:
        return _read(self.run_file)

    def trial_record(self, model_id: str) -> dict[str, Any]:
        path = self.trial_dir(model_id) / TRIAL_FILE
        try:
            return _read(path)
        except RunDirError:
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
        except RunDirError:
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


# ----------------------------------------------------------------------------------------------
# A new run


@dataclass(frozen=True)
class SweepSettings:
    """How a sweep runs its trials; run.json records it under ``sweep``.

    ``data_dir`` is kept as the user gave it (None: the default root), never resolved to this
    machine's absolute path; the driver resolves it when it starts the trials
    (``orchestrator.resources.trial_data_dir``). ``faults``: test-only, see
    ``orchestrator.fault_injection``."""

    resources: Resources
    max_failures: int
    shard_retries: int
    data_dir: str | None
    download: bool
    faults: dict[str, float | int | str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The JSON run.json keeps (and ``mpo sweep --resume`` reads back)."""
        return {
            "resources": asdict(self.resources),
            "max_failures": self.max_failures,
            "trial_settings": {
                "data_dir": self.data_dir,
                "download": self.download,
                "shard_retries": self.shard_retries,
            },
            "faults": self.faults,
        }


def settings_for(res: Resources, *, max_failures: int, shard_retries: int, data_dir: str | None,
                 download: bool) -> SweepSettings:
    """The settings of a sweep started now (with the test faults of ``MPO_TEST_FAULTS``)."""
    return SweepSettings(res, max_failures=max_failures, shard_retries=shard_retries,
                         data_dir=data_dir, download=download,
                         faults=fault_injection.requested_faults())


def prepare_run(plan: SweepPlan, grid_text: str, run_dir: Path, *, settings: SweepSettings,
                command: str | None = None) -> RunDir:
    """Create a new run folder: run.json, grid.yaml (the snapshot) and manifest.json."""
    rd = RunDir(run_dir)
    if rd.path.exists() and any(rd.path.iterdir()):
        hint = f"; continue it with `mpo sweep --resume {rd.path}`" if rd.exists() else ""
        raise SweepError(f"{rd.path} already exists and is not empty{hint}, or choose another --name")
    rd.path.mkdir(parents=True, exist_ok=True)
    info = run_record(rd.path.name, command=command)
    info["sweep"] = settings.record()
    write_json_atomic(rd.run_file, info)
    write_text_atomic(rd.grid_file, grid_text)
    for file in plan.suite_files.values():  # the run folder is self-contained: resume needs them
        write_text_atomic(rd.suite_dir / file.name, file.read_text())
    write_json_atomic(rd.manifest_file, plan.manifest())
    return rd


def record_sweep(rd: RunDir, *, started: float, finished: float, resume: bool,
                 records: dict[str, dict[str, Any]], trials_run: int,
                 interrupted: str | None = None) -> dict[str, Any]:
    """Append one driver invocation (start, end, wall seconds, how many trials it ran, the
    signal that stopped it if one did, trial states) to run.json's ``sweeps`` list, so a run's
    snapshot says how long it took (a resume adds an entry)."""

    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")

    info = _read(rd.run_file)
    states: dict[str, int] = {}
    for record in records.values():
        state = str(record.get("state") or "pending")
        states[state] = states.get(state, 0) + 1
    entry = {"started": iso(started), "finished": iso(finished),
             "wall_seconds": round(finished - started, 1), "resume": resume,
             "trials_run": trials_run, "trial_states": dict(sorted(states.items()))}
    if interrupted:
        entry["interrupted"] = interrupted
    info["sweeps"] = [*info.get("sweeps", []), entry]
    write_json_atomic(rd.run_file, info)
    return entry


# ----------------------------------------------------------------------------------------------
# Resuming


def _dict_diff(old: object, new: object, prefix: str = "") -> list[str]:
    """``a.b: 3 -> 4`` for every leaf that differs between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _dict_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def _without_models(groups: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    return {g: {k: v for k, v in spec.items() if k != "models"} for g, spec in (groups or {}).items()}


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two manifests, in words (for refusing a changed grid on resume).

    A model whose training config changed keeps its label and gets another model id: it is
    described by the config fields that changed, not as one trial gone and another new."""
    lines = []
    old_t, new_t = old.get("trials", {}), new.get("trials", {})
    old_by_label = {t["label"]: mid for mid, t in old_t.items() if mid not in new_t}
    paired: set[str] = set()
    for mid in sorted(set(new_t) - set(old_t)):
        label = new_t[mid]["label"]
        was = old_by_label.get(label)
        if was is not None and "config" in old_t[was] and "config" in new_t[mid]:
            paired.add(was)
            diff = _dict_diff(old_t[was]["config"], new_t[mid]["config"])
            lines.append(f"trial {label}: training config changed ({'; '.join(diff)}), "
                         f"model id {was} -> {mid}")
        else:
            lines.append(f"new trial {label} ({mid})")
    for mid in sorted(set(old_t) - set(new_t) - paired):
        lines.append(f"trial {old_t[mid]['label']} ({mid}) is gone")
    for mid in sorted(set(old_t) & set(new_t)):
        for key in ("label", "groups", "attacks"):
            if old_t[mid].get(key) != new_t[mid].get(key):
                lines.append(f"trial {mid}: {key} {old_t[mid].get(key)} -> {new_t[mid].get(key)}")
    lines += [f"groups.{d}" for d in _dict_diff(_without_models(old.get("groups")),
                                                _without_models(new.get("groups")))]
    lines += [f"evaluation.{d}" for d in _dict_diff(old.get("evaluation"), new.get("evaluation"))]
    if not lines and old.get("shards") != new.get("shards"):
        lines.append("the evaluation shards differ")
    return lines


def load_run(run_dir: Path, *, grid: str | None = None) -> tuple[RunDir, SweepPlan, dict[str, Any]]:
    """An existing run folder, its plan (from its grid snapshot) and its saved sweep settings
    (run.json's ``sweep``), the plan checked against the run's manifest and, when ``grid`` is
    given, against that grid: a changed grid is refused with the differences."""
    rd = RunDir(run_dir)
    rd.check()
    snapshot = parse_grid(load_yaml(rd.grid_file, error=RunDirError, what="grid snapshot"),
                          source=str(rd.grid_file))
    plan = expand_grid(snapshot, source=str(rd.grid_file), suite_dir=rd.suite_dir)
    saved = rd.manifest()
    changes = describe_changes(saved, plan.manifest())
    if changes:
        raise SweepError(
            f"{rd.grid_file} no longer expands to the run's manifest.json, so the run cannot be "
            "resumed safely (its trials and results belong to the old grid):\n  - "
            + "\n  - ".join(changes) + "\nStart a new run (another --name) for the new grid."
        )
    if grid is not None:
        new_grid, _text, path = load_grid_text(grid)
        new_plan = expand_grid(new_grid, source=str(path), grid_dir=path.parent)
        changes = describe_changes(saved, new_plan.manifest())
        if changes:
            raise SweepError(
                f"{path} differs from the grid this run was started with ({rd.grid_file}); "
                "resuming would mix two grids' trials and results:\n  - "
                + "\n  - ".join(changes)
                + f"\nResume with the original grid (`mpo sweep --resume {rd.path}`), or start "
                "a new run (another --name) for the changed grid."
            )
    return rd, plan, rd.run().get("sweep", {})


# ----------------------------------------------------------------------------------------------
# Results files that cannot be trusted, and what a resumed driver runs again


@dataclass(frozen=True)
class ShardProblem:
    """An expected results file that is missing (of a finished trial) or cannot be trusted."""

    model_id: str
    path: Path
    reason: str


def expected_files(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """{model_id: the results file names its trial writes}, in the manifest's order."""
    out: dict[str, list[str]] = {mid: [] for mid in manifest.get("trials", {})}
    for shard in manifest.get("shards", []):
        out.setdefault(shard["model_id"], []).append(Shard(**shard).filename)
    return out


def _unreadable(path: Path) -> str | None:
    """Why parquet cannot read ``path`` in full, or None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        return f"unreadable parquet file ({err})"
    return None


def shard_problems(rd: RunDir, manifest: dict[str, Any]) -> list[ShardProblem]:
    """Every expected results file that is missing although its trial says ``done``, that
    differs from the size and sha256 its trial recorded when it finished (trial.json's
    ``shard_files``: a storage fault parquet may not notice), or, where nothing was recorded
    (a trial still running), that parquet cannot read. Reads every file once."""
    from analysis.loading import SHARD_FILES, differs_from_record

    problems = []
    for mid, names in expected_files(manifest).items():
        record = rd.trial_record(mid)
        recorded = record.get(SHARD_FILES) or {}
        for name in names:
            path = rd.results_dir(mid) / name
            if not path.exists():
                if record.get("state") == "done":
                    problems.append(ShardProblem(mid, path, "missing"))
                continue
            reason = differs_from_record(path, recorded.get(name)) or _unreadable(path)
            if reason is not None:
                problems.append(ShardProblem(mid, path, reason))
    return problems


CORRUPT_SUFFIX = ".corrupt"


def prepare_resume(rd: RunDir, plan: SweepPlan) -> tuple[list[str], list[ShardProblem]]:
    """(the trials a resumed driver runs, the results files it found unusable).

    A corrupt file is renamed to ``<name>.corrupt`` (kept for a look, never read again) so that
    its shard is computed anew: ``jobs.evaluation`` would otherwise trust a damaged file whose
    content key is still readable. A finished trial with a missing or corrupt file goes back to
    ``evaluating`` (its training stays done: its checkpoint is not touched) and forgets its
    recorded digests until it finishes again. Trials not finished run again; the others do not
    start at all."""
    from analysis.loading import SHARD_FILES

    problems = shard_problems(rd, plan.manifest())
    for p in problems:
        if p.path.exists():
            p.path.replace(p.path.with_name(p.path.name + CORRUPT_SUFFIX))
    for mid in sorted({p.model_id for p in problems}):
        if rd.trial_record(mid).get("state") == "done":
            rd.update_trial(mid, state="evaluating", **{SHARD_FILES: {}})
    todo = [mid for mid in plan.trials if rd.trial_record(mid).get("state") != "done"]
    return todo, problems


# ----------------------------------------------------------------------------------------------
# Status (no Ray)


@dataclass
class TrialStatus:
    model_id: str
    label: str
    dataset: str
    groups: list[str]
    state: str
    epoch: int
    epochs: int
    shards_done: int
    shards_total: int
    failed_shards: int
    attempts: int
    wall_seconds: float | None
    summary: dict[str, Any]
    error: str | None


@dataclass
class RunStatus:
    """A run folder as ``mpo status`` shows it: run.json, one ``TrialStatus`` per trial of the
    manifest, the results files that cannot be trusted, and the driver that holds the folder
    (its lock record, and whether it still holds it)."""

    run: dict[str, Any]
    trials: list[TrialStatus]
    problems: list[ShardProblem]
    driver: dict[str, Any]
    driver_running: bool


def _epochs_done(trial_dir: Path) -> int:
    metrics = trial_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0
    return sum(1 for line in metrics.read_text().splitlines() if line.strip())


def collect_status(run_dir: str | os.PathLike[str]) -> RunStatus:
    """The run's state, read from its files only (every results file is read once)."""
    rd = RunDir(Path(run_dir).resolve())
    rd.check()
    manifest = rd.manifest()
    problems = shard_problems(rd, manifest)
    bad = {p.path for p in problems}
    out = []
    for mid, names in expected_files(manifest).items():
        trial = manifest["trials"][mid]
        record = rd.trial_record(mid)
        good = [n for n in names if (rd.results_dir(mid) / n).exists()
                and rd.results_dir(mid) / n not in bad]
        out.append(
            TrialStatus(
                model_id=mid,
                label=trial["label"],
                dataset=trial["dataset"],
                groups=list(trial["groups"]),
                state=record.get("state", "pending"),
                epoch=_epochs_done(rd.trial_dir(mid)),
                epochs=int(trial["config"]["epochs"]),
                shards_done=len(good),
                shards_total=len(names),
                failed_shards=len(record.get("failed_shards", [])),
                attempts=int(record.get("attempts", 0)),
                wall_seconds=record.get("wall_seconds"),
                summary=record.get("summary") or {},
                error=record.get("error"),
            )
        )
    return RunStatus(rd.run(), out, problems, runlock.read_holder(rd.path),
                     runlock.is_held(rd.path))
