"""The run folder a sweep writes, and reading it back without Ray (``mpo status``).

Layout (``RUN_DIR`` = ``--storage``/``--name``)::

    RUN_DIR/
      run.json        {name, created, mpo_version, git_commit, versions{torch,ray,python},
                       hardware, command, sweep{settings: resources, retries, data_dir, ...}}
      grid.yaml       the grid file as it was when the sweep started
      suites/         copies of the suite files the grid names (built-in suites are not copied)
      manifest.json   the expected work: groups, trials (by model id) and shards
      trials/<model_id>/  config.json, state.pt, checkpoint.pt, metrics.jsonl (jobs.training),
                          trial.json {state, attempts, wall_seconds, resumed_from_epoch,
                                      summary, failed_shards, error, ...} (the trainable)
      results/<model_id>/<attack>__<start>-<stop>.parquet   (jobs.evaluation; jobs.schema)
      tune/           Ray Tune's experiment state (Tuner.restore reads it on --resume)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.errors import MpoError
from jobs.io import read_json as _read_json
from jobs.io import write_json_atomic

RUN_FILE = "run.json"
GRID_FILE = "grid.yaml"
MANIFEST_FILE = "manifest.json"
TRIALS_DIR = "trials"
RESULTS_DIR = "results"
TUNE_DIR = "tune"
SUITES_DIR = "suites"
TRIAL_FILE = "trial.json"

#: trial.json states, in the order a trial goes through them.
TRIAL_STATES = ("pending", "training", "evaluating", "done", "error")


class RunDirError(MpoError, ValueError):
    """A folder that is not (or not a usable) mpo run folder."""


def read_json(path: Path) -> Any:
    return _read_json(path, error=RunDirError)


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def grid_file(self) -> Path:
        return self.path / GRID_FILE

    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def suite_dir(self) -> Path:
        return self.path / SUITES_DIR

    @property
    def tune_dir(self) -> Path:
        return self.path / TUNE_DIR

    def trial_dir(self, model_id: str) -> Path:
        return self.path / TRIALS_DIR / model_id

    def results_dir(self, model_id: str) -> Path:
        return self.path / RESULTS_DIR / model_id

    def shard_path(self, model_id: str, attack: str, start: int, stop: int) -> Path:
        return self.results_dir(model_id) / f"{attack}__{start}-{stop}.parquet"

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
        return read_json(self.manifest_file)

    def run(self) -> dict[str, Any]:
        return read_json(self.run_file)

    def trial_record(self, model_id: str) -> dict[str, Any]:
        path = self.trial_dir(model_id) / TRIAL_FILE
        try:
            return read_json(path)
        except RunDirError:
            return {}

    def update_trial(self, model_id: str, /, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into trials/<model_id>/trial.json (one writer per trial: its trainable)."""
        record = self.trial_record(model_id)
        record.update(fields)
        write_json_atomic(self.trial_dir(model_id) / TRIAL_FILE, record)
        return record


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


def _epochs_done(trial_dir: Path) -> int:
    metrics = trial_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0
    return sum(1 for line in metrics.read_text().splitlines() if line.strip())


def collect_status(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], list[TrialStatus]]:
    """(run.json, one TrialStatus per trial of the manifest), read from files only."""
    rd = RunDir(Path(run_dir))
    rd.check()
    manifest = rd.manifest()
    expected: dict[str, set[str]] = {}
    for shard in manifest["shards"]:
        name = f"{shard['attack']}__{shard['start']}-{shard['stop']}.parquet"
        expected.setdefault(shard["model_id"], set()).add(name)
    out = []
    for mid, trial in manifest["trials"].items():
        record = rd.trial_record(mid)
        results = rd.results_dir(mid)
        present = {p.name for p in results.glob("*.parquet")} if results.is_dir() else set()
        want = expected.get(mid, set())
        out.append(
            TrialStatus(
                model_id=mid,
                label=trial["label"],
                dataset=trial["dataset"],
                groups=list(trial["groups"]),
                state=record.get("state", "pending"),
                epoch=_epochs_done(rd.trial_dir(mid)),
                epochs=int(trial["config"]["epochs"]),
                shards_done=len(want & present),
                shards_total=len(want),
                failed_shards=len(record.get("failed_shards", [])),
                attempts=int(record.get("attempts", 0)),
                wall_seconds=record.get("wall_seconds"),
                summary=record.get("summary") or {},
                error=record.get("error"),
            )
        )
    return rd.run(), out
