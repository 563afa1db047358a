"""A rich live table of the sweep's trials, driven by a Ray Tune callback (Tune itself is quiet).

A trial that fails (its code raised, or its actor died with its node) gets one line above the
table, saying whether Tune restarts it and where the full error is, in place of Tune's own
traceback (``TUNE_PRINT_ALL_TRIAL_ERRORS=0``, set by the driver)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune
from ray.exceptions import RayTaskError
from rich.console import Console
from rich.live import Live
from rich.table import Table

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

STATE_STYLE = {"done": "green", "error": "red", "training": "cyan", "evaluating": "magenta"}


@dataclass
class Row:
    model_id: str
    label: str
    groups: str
    epochs: int
    state: str = "pending"
    epoch: int = 0
    loss: float | None = None
    clean: float | None = None
    adv: dict[str, float] = field(default_factory=dict)
    shards: str = ""
    union: str = ""
    started: float | None = None
    ended: float | None = None
    errors: int = 0

    def elapsed(self) -> str:
        if self.started is None:
            return ""
        secs = int((self.ended or time.time()) - self.started)
        return f"{secs // 60}:{secs % 60:02d}"


def describe_error(trial: Trial) -> str:
    """``Type: first line`` of the trial's last error (for a task error, of the exception the
    trainable raised), read from the error file Tune has just written on this machine."""
    from ray import cloudpickle

    path = trial.pickled_error_file
    try:
        error = cloudpickle.loads(Path(path).read_bytes()) if path else None
    except Exception:  # an error that does not unpickle here: its text file says it all
        return "see its error file"
    if isinstance(error, RayTaskError):
        error = error.cause
    if not isinstance(error, BaseException):
        return "see its error file"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


class LiveTable(tune.Callback):
    """Keeps one row per trial up to date from Tune's events and renders it with rich.Live."""

    def __init__(self, trials: dict[str, dict[str, Any]], *, console: Console | None = None,
                 title: str = "") -> None:
        self.console = console or Console()
        self.title = title
        self.rows = {
            mid: Row(mid, t["label"], ",".join(t["groups"]), int(t["config"]["epochs"]))
            for mid, t in trials.items()
        }
        self.live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the run config (with its callbacks) into the experiment folder; the
        # console and the live display are this driver's own and are not saved.
        state = self.__dict__.copy()
        state["console"] = None
        state["live"] = None
        return state

    # -- rendering ------------------------------------------------------------------------------
    def render(self) -> Table:
        table = Table(title=self.title, expand=False)
        for col in ("model", "id", "groups", "state", "epoch", "loss", "clean", "adv (train)",
                    "shards", "union/avg", "time"):
            table.add_column(col, overflow="fold", no_wrap=col in ("model", "state"))
        for r in self.rows.values():
            style = STATE_STYLE.get(r.state, "")
            state = f"[{style}]{r.state}[/]" if style else r.state
            if r.errors:
                state += f" ({r.errors} restarts)"
            adv = " ".join(f"{k}={v:.2f}" for k, v in r.adv.items())
            table.add_row(r.label, r.model_id, r.groups, state, f"{r.epoch}/{r.epochs}",
                          _fmt(r.loss), _fmt(r.clean), adv, r.shards, r.union, r.elapsed())
        return table

    def start(self) -> None:
        self.live = Live(self.render(), console=self.console, refresh_per_second=2,
                         transient=False, auto_refresh=self.console.is_terminal)
        self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.update(self.render(), refresh=True)
            self.live.stop()
            self.live = None

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render(), refresh=self.console.is_terminal)

    def _row(self, trial: Trial) -> Row | None:
        return self.rows.get(trial.config.get("model_id"))

    def _end(self, trial: Trial, state: str) -> None:
        row = self._row(trial)
        if row is not None:
            row.state, row.ended = state, time.time()
            self._refresh()

    # -- Tune events ----------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        row = self._row(trial)
        if row is not None:
            row.state = "training"
            row.started = row.started or time.time()
            row.ended = None
            self._refresh()

    def on_trial_restore(self, iteration: int, trials: list[Trial], trial: Trial,
                         **info: Any) -> None:
        self.on_trial_start(iteration, trials, trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial,
                        result: dict[str, Any], **info: Any) -> None:
        row = self._row(trial)
        if row is None:
            return
        row.started = row.started or time.time()
        phase = result.get("phase")
        if phase == "train":
            row.state = "training"
            row.epoch = int(result.get("epoch", row.epoch))
            row.loss = result.get("train_loss")
            row.clean = result.get("clean_acc")
            row.adv = {k.split("/", 1)[1]: v for k, v in result.items()
                       if k.startswith("adv_acc/") and isinstance(v, int | float)}
        elif phase == "eval":
            row.state = "evaluating"
            row.epoch = row.epochs
            row.shards = f"{result.get('shards_done', 0)}/{result.get('shards_total', '?')}"
        elif phase == "done":
            row.epoch = row.epochs
            row.shards = f"{result.get('shards_done', 0)}/{result.get('shards_total', '?')}"
            unions = [(k, v) for k, v in result.items()
                      if k.startswith("eval/groups/") and k.endswith("/union")]
            if unions:
                parts = []
                for key, union in unions:
                    group = key.split("/")[2]
                    avg = result.get(f"eval/groups/{group}/average")
                    parts.append(f"{group}: {union:.3f}/{_fmt(avg)}")
                row.union = " ".join(parts)
        self._refresh()

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info: Any) -> None:
        self._end(trial, "done")

    def _say_failed(self, trial: Trial, then: str) -> None:
        row = self._row(trial)
        self.console.print(f"[red]{row.label if row else trial}[/]: trial failed "
                           f"({describe_error(trial)}); {then}; the whole error: "
                           f"{Path(trial.storage.trial_fs_path) / 'error.txt'}", soft_wrap=True)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial,
                         **info: Any) -> None:
        row = self._row(trial)
        self._say_failed(trial, "Tune restarts it from its last checkpoint")
        if row is not None:
            row.errors += 1
            row.state = "restarting"
            self._refresh()

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        self._say_failed(trial, "no restarts left (--max-failures)")
        self._end(trial, "error")
