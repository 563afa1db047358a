"""The run folder of a sweep: creating it, resuming it, and reading its state without Ray
(``mpo status``). Its layout and records are ``jobs.run_folder``'s (shared with ``mpo eval``,
``mpo report`` and ``mpo export``).

The files are the truth about what is done: a trial is finished when its trial.json says
``done`` and every one of its results files is present and intact (``shard_problems``);
``prepare_resume`` picks the trials a resumed driver runs again. Every file is written through
``jobs.io`` (atomic), except the lock (``orchestrator.runlock``). No Ray.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobs.io import load_yaml, run_record, write_json_atomic, write_text_atomic
from jobs.run_folder import (
    SHARD_FILES,
    Manifest,
    RunFolder,
    RunFolderError,
    TrialEntry,
    differs_from_record,
    epochs_done,
)
from orchestrator import fault_injection, runlock
from orchestrator.grid import load_grid_text, parse_grid
from orchestrator.plan import SweepPlan, expand_grid
from orchestrator.resources import MpoError, Resources

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
                command: str | None = None) -> RunFolder:
    """Create a new run folder: run.json, grid.yaml (the snapshot) and manifest.json."""
    rd = RunFolder(run_dir)
    if rd.path.exists() and any(rd.path.iterdir()):
        hint = f"; continue it with `mpo sweep --resume {rd.path}`" if rd.exists() else ""
        raise MpoError(f"{rd.path} already exists and is not empty{hint}, or choose another --name")
    rd.path.mkdir(parents=True, exist_ok=True)
    info = run_record(rd.path.name, command=command)
    info["sweep"] = settings.record()
    write_json_atomic(rd.run_file, info)
    write_text_atomic(rd.grid_file, grid_text)
    for file in plan.suite_files.values():  # the run folder is self-contained: resume needs them
        write_text_atomic(rd.suite_dir / file.name, file.read_text())
    rd.write_manifest(plan.manifest())
    return rd


def record_sweep(rd: RunFolder, *, started: float, finished: float, resume: bool,
                 records: dict[str, dict[str, Any]], trials_run: int,
                 interrupted: str | None = None, cpus: float | None = None,
                 ran: list[str] | None = None) -> dict[str, Any]:
    """Append one driver invocation (start, end, wall seconds, how many trials it ran, the
    signal that stopped it if one did, trial states, and with the cluster's ``cpus`` how busy
    it kept them: ``orchestrator.utilisation``, from the records of the trials it ``ran``) to
    run.json's ``sweeps`` list, so a run's snapshot says how long it took (a resume adds an
    entry). An interrupted run skips the utilisation: a signal's exit stays within seconds,
    however many shard records a large sweep has."""
    from orchestrator.utilisation import sweep_utilisation

    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")

    info = rd.run()
    states: dict[str, int] = {}
    for record in records.values():
        state = str(record.get("state") or "pending")
        states[state] = states.get(state, 0) + 1
    entry = {"started": iso(started), "finished": iso(finished),
             "wall_seconds": round(finished - started, 1), "resume": resume,
             "trials_run": trials_run, "trial_states": dict(sorted(states.items()))}
    if interrupted:
        entry["interrupted"] = interrupted
    if cpus and not interrupted:
        entry["utilisation"] = sweep_utilisation(rd, list(records) if ran is None else ran,
                                                 started=started, finished=finished, cpus=cpus)
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


def load_run(run_dir: Path, *, grid: str | None = None) -> tuple[RunFolder, SweepPlan, dict[str, Any]]:
    """An existing run folder, its plan (from its grid snapshot) and its saved sweep settings
    (run.json's ``sweep``), the plan checked against the run's manifest and, when ``grid`` is
    given, against that grid: a changed grid is refused with the differences."""
    rd = RunFolder(run_dir)
    rd.check(sweep=True)
    snapshot = parse_grid(load_yaml(rd.grid_file, error=RunFolderError, what="grid snapshot"),
                          source=str(rd.grid_file))
    plan = expand_grid(snapshot, source=str(rd.grid_file), suite_dir=rd.suite_dir)
    saved = rd.manifest().to_dict()
    changes = describe_changes(saved, plan.manifest().to_dict())
    if changes:
        raise MpoError(
            f"{rd.grid_file} no longer expands to the run's manifest.json, so the run cannot be "
            "resumed safely (its trials and results belong to the old grid):\n  - "
            + "\n  - ".join(changes) + "\nStart a new run (another --name) for the new grid."
        )
    if grid is not None:
        new_grid, _text, path = load_grid_text(grid)
        new_plan = expand_grid(new_grid, source=str(path), grid_dir=path.parent)
        changes = describe_changes(saved, new_plan.manifest().to_dict())
        if changes:
            raise MpoError(
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


def _unreadable(path: Path) -> str | None:
    """Why parquet cannot read ``path`` in full, or None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        return f"unreadable parquet file ({err})"
    return None


def shard_problems(rd: RunFolder, manifest: Manifest) -> list[ShardProblem]:
    """Every expected results file that is missing although its trial says ``done``, that
    differs from the size and sha256 its trial recorded when it finished (trial.json's
    ``shard_files``: a storage fault parquet may not notice), or, where nothing was recorded
    (a trial still running), that parquet cannot read. Reads every file once."""
    problems = []
    for mid, names in manifest.expected_files().items():
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


def prepare_resume(rd: RunFolder, plan: SweepPlan) -> tuple[list[str], list[ShardProblem]]:
    """(the trials a resumed driver runs, the results files it found unusable).

    A corrupt file is renamed to ``<name>.corrupt`` (kept for a look, never read again) so that
    its shard is computed anew: ``jobs.evaluation`` would otherwise trust a damaged file whose
    content key is still readable. A finished trial with a missing or corrupt file goes back to
    ``evaluating`` (its training stays done: its checkpoint is not touched) and forgets its
    recorded digests until it finishes again. Trials not finished run again; the others do not
    start at all."""
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
    #: the models it starts from (model ids)
    parents: list[str] = field(default_factory=list)


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


def _trial_status(rd: RunFolder, mid: str, trial: TrialEntry, names: list[str],
                  bad: set[Path]) -> TrialStatus:
    record = rd.trial_record(mid)
    good = [n for n in names if (rd.results_dir(mid) / n).exists()
            and rd.results_dir(mid) / n not in bad]
    # ``mpo eval`` keeps no trial record: its model is done when every expected file is there
    state = record.get("state") or ("done" if len(good) == len(names) else "incomplete")
    return TrialStatus(
        model_id=mid, label=trial.label, dataset=trial.dataset, groups=list(trial.groups),
        state=state, epoch=epochs_done(rd.trial_dir(mid)),
        epochs=math.ceil(float(trial.config.get("epochs") or 0)), parents=list(trial.parents),
        shards_done=len(good), shards_total=len(names),
        failed_shards=len(record.get("failed_shards", [])), attempts=int(record.get("attempts", 0)),
        wall_seconds=record.get("wall_seconds"), summary=record.get("summary") or {},
        error=record.get("error"),
    )


def collect_status(run_dir: str | os.PathLike[str]) -> RunStatus:
    """The state of a sweep's or an ``mpo eval``'s run folder, read from its files only (every
    results file is read once)."""
    rd = RunFolder(Path(run_dir).resolve())
    rd.check()
    manifest = rd.manifest()
    problems = shard_problems(rd, manifest)
    bad = {p.path for p in problems}
    out = [_trial_status(rd, mid, manifest.trials[mid], names, bad)
           for mid, names in manifest.expected_files().items() if mid in manifest.trials]
    run = rd.run() if rd.run_file.exists() else {}
    return RunStatus(run, out, problems, runlock.read_holder(rd.path), runlock.is_held(rd.path))
