"""The sweep's progress, driven by a Ray Tune callback (Tune itself is quiet).

On a terminal: a rich live table of the trials that fits the terminal. As the width shrinks it
shows fewer columns (``LAYOUTS``: the training attacks' accuracies go first, then the groups, the
ids, then epoch and shards merge into one column...), and never folds a number or an id; when
the rows do not fit the terminal's height, the running trials are shown first and the others are
counted on the line below ("+5 more: 3 done, 2 pending").

Anywhere else (a file, a pipe, a CI log, nohup): no live display, one plain line per trial event
("[12:03:04] Adv_max epoch 3/6 loss 1.234 clean 0.912 adv linf 0.450"), as wide as it needs.

A trial that fails (its code raised, or its actor died with its node) gets one line, saying
whether Tune restarts it and where the full error is, in place of Tune's own traceback
(``TUNE_PRINT_ALL_TRIAL_ERRORS=0``, set by the driver)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune
from ray.exceptions import RayTaskError
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.console import Col, column_needs, table_width

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

STATE_STYLE = {"done": "green", "error": "red", "training": "cyan", "evaluating": "magenta",
               "restarting": "yellow"}
#: which rows a screen too short for all shows first (lower first); then the latest to finish
SHOW_FIRST = {"training": 0, "evaluating": 0, "restarting": 0, "error": 1, "done": 2,
              "pending": 3}

#: every column the live table can show
COLUMNS = {c.header: c for c in (
    Col("model"), Col("id", "id"), Col("groups"), Col("state"), Col("epoch", "num"),
    Col("loss", "num"), Col("clean", "num"), Col("adv (train)"), Col("shards", "num"),
    Col("progress"), Col("union/avg"), Col("union"), Col("time", "num"),
)}
#: the columns shown, widest first: the first layout that fits the terminal is used
LAYOUTS: tuple[tuple[str, ...], ...] = (
    ("model", "id", "groups", "state", "epoch", "loss", "clean", "adv (train)", "shards",
     "union/avg", "time"),
    ("model", "id", "groups", "state", "epoch", "loss", "clean", "shards", "union/avg", "time"),
    ("model", "id", "state", "epoch", "loss", "clean", "shards", "union/avg", "time"),
    ("model", "state", "epoch", "loss", "clean", "shards", "union/avg", "time"),
    ("model", "state", "progress", "loss", "clean", "union/avg", "time"),
    ("model", "state", "progress", "clean", "union/avg", "time"),
    ("model", "state", "progress", "clean", "union", "time"),
    ("model", "state", "progress", "union", "time"),
    ("model", "state", "progress", "union"),
)
#: lines of the live display besides its rows: title, three of header, bottom, the count line
CHROME_LINES = 6


@dataclass
class Row:
    """What the display knows of one trial."""

    model_id: str
    label: str
    groups: str
    epochs: int
    state: str = "pending"
    epoch: int = 0
    loss: float | None = None
    clean: float | None = None
    adv: dict[str, float] = field(default_factory=dict)
    shards_done: int = 0
    shards_total: int | None = None
    shards_failed: int = 0
    union: list[tuple[str, float, float | None]] = field(default_factory=list)
    started: float | None = None
    ended: float | None = None
    errors: int = 0

    def elapsed(self) -> str:
        if self.started is None:
            return ""
        secs = int((self.ended or time.time()) - self.started)
        return f"{secs // 60}:{secs % 60:02d}"

    def shards(self) -> str:
        return "" if self.shards_total is None else f"{self.shards_done}/{self.shards_total}"

    def progress(self) -> str:
        """Epochs while training, shards once evaluating: the merged column of narrow layouts."""
        if self.shards_total is not None:
            return f"shards {self.shards()}"
        return f"epoch {self.epoch}/{self.epochs}" if self.state != "pending" else ""

    def union_parts(self, *, average: bool = True) -> list[str]:
        """Per group: ``group union/average`` (or ``group union``)."""
        return [f"{g} {u:.3f}" + (f"/{_fmt(a)}" if average else "") for g, u, a in self.union]


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


def _counts(rows: list[Row]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    order = sorted(counts, key=lambda s: (SHOW_FIRST.get(s, 0), s))
    return ", ".join(f"{counts[s]} {s}" for s in order)


def row_cells(r: Row) -> dict[str, str]:
    """Every column's cell of one row (rich markup); a restarted trial's state shows its
    restarts (``training ↻1``)."""
    style = STATE_STYLE.get(r.state, "")
    state = f"[{style}]{r.state}[/]" if style else r.state
    return {
        "model": r.label, "id": r.model_id, "groups": r.groups,
        "state": state + (f" ↻{r.errors}" if r.errors else ""),
        "epoch": f"{r.epoch}/{r.epochs}" if r.state != "pending" else "",
        "loss": _fmt(r.loss), "clean": _fmt(r.clean),
        "adv (train)": " ".join(f"{k}={v:.2f}" for k, v in r.adv.items()),
        "shards": r.shards(), "progress": r.progress(),
        "union/avg": " ".join(r.union_parts()),
        "union": " ".join(r.union_parts(average=False)), "time": r.elapsed(),
    }


def split_rows(rows: list[Row], budget: int) -> tuple[list[Row], list[Row]]:
    """(rows shown, in their order; rows left out) for a screen with room for ``budget`` rows:
    running trials first, then failed ones, the latest finished, and the pending."""
    if len(rows) <= budget:
        return rows, []
    ranked = sorted(range(len(rows)), key=lambda i: (
        SHOW_FIRST.get(rows[i].state, 0), -(rows[i].ended or 0.0), i))
    shown = set(ranked[:max(budget, 1)])
    return ([r for i, r in enumerate(rows) if i in shown],
            [r for i, r in enumerate(rows) if i not in shown])


def _trim_union(cells: list[dict[str, str]], shown: list[Row], room: int) -> None:
    """The last resort of a very narrow terminal: each row keeps the groups' unions that fit
    ``room`` columns and counts the others (``+2``), rather than cutting a number."""
    for c, r in zip(cells, shown, strict=True):
        parts = r.union_parts(average=False)
        for k in range(len(parts), -1, -1):
            text = " ".join([*parts[:k], *([f"+{len(parts) - k}"] if k < len(parts) else [])])
            if len(text) <= room or k == 0:
                c["union"] = text
                break


def live_view(rows: list[Row], *, width: int, height: int, title: str = "") -> Group:
    """The live display for a terminal of ``width`` x ``height``: a table of one line per
    trial in the widest layout that fits, and a line that counts the trials by state (and the
    ones left out)."""
    shown, hidden = split_rows(rows, height - CHROME_LINES)
    cells = [row_cells(r) for r in shown]
    for names in LAYOUTS:
        data = [[c[n] for n in names] for c in cells]
        if table_width(column_needs([COLUMNS[n] for n in names], data)) <= width:
            break
    else:
        others = [n for n in names if n != "union"]
        needs = column_needs([COLUMNS[n] for n in others], [[c[n] for n in others] for c in cells])
        _trim_union(cells, shown, width - table_width(needs) - 3)
        data = [[c[n] for n in names] for c in cells]
    table = Table(title=Text(title, no_wrap=True, overflow="ellipsis") if title else None)
    for n in names:
        table.add_column(n, justify="right" if COLUMNS[n].kind == "num" else "left",
                         no_wrap=True, overflow="ellipsis")
    for d in data:
        table.add_row(*d)
    line = f"{len(rows)} trials: {_counts(rows)}"
    if hidden:
        line = f"+{len(hidden)} more: {_counts(hidden)} | {line}"
    if any(r.errors for r in rows) and len(line) + 24 <= width:
        line += " | ↻n: restarted n times"
    return Group(table, Text(line, no_wrap=True, overflow="ellipsis"))


class LiveTable(tune.Callback):
    """Keeps one row per trial up to date from Tune's events; on a terminal it renders them with
    rich.Live, elsewhere it prints a line per event."""

    def __init__(self, trials: dict[str, dict[str, Any]], *, console: Console | None = None,
                 title: str = "") -> None:
        self.console = console or Console()
        self.plain = not self.console.is_terminal
        self.title = title
        self.rows = {
            mid: Row(mid, t["label"], ",".join(t["groups"]),
                     math.ceil(float(t["config"].get("epochs") or 0)))
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
    def render(self) -> Group:
        """The live display at the console's size."""
        return live_view(list(self.rows.values()), width=self.console.width,
                         height=self.console.height, title=self.title)

    def start(self) -> None:
        if self.plain:
            return
        self.live = Live(self.render(), console=self.console, refresh_per_second=2,
                         transient=False, auto_refresh=True, get_renderable=self.render)
        self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.update(self.render(), refresh=True)
            self.live.stop()
            self.live = None

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render(), refresh=True)

    def say(self, row: Row | None, text: str) -> None:
        """One plain event line (only where there is no live table)."""
        if self.plain and row is not None:
            self.console.print(f"[{time.strftime('%H:%M:%S')}] {row.label} {text}",
                               markup=False, highlight=False, soft_wrap=True)

    def not_run(self, mid: str, reason: str) -> None:
        """A trial that will not run in this sweep (its parent failed)."""
        row = self.rows.get(mid)
        if row is not None:
            row.state, row.ended = "not run", time.time()
            self.say(row, f"not run: {reason}")
            self._refresh()

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
            again = row.started is not None
            row.state = "training"
            row.started = row.started or time.time()
            row.ended = None
            self.say(row, "started again" if again else
                     f"({row.model_id}, groups {row.groups}) started: "
                     + (f"{row.epochs} epochs" if row.epochs else "evaluation only"))
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
            self._trained(row, result)
        elif phase in ("eval", "done"):
            self._evaluated(row, result, done=phase == "done")
        self._refresh()

    def _trained(self, row: Row, result: dict[str, Any]) -> None:
        row.state = "training"
        row.epoch = int(result.get("epoch", row.epoch))
        row.loss = result.get("train_loss")
        row.clean = result.get("clean_acc")
        row.adv = {k.split("/", 1)[1]: v for k, v in result.items()
                   if k.startswith("adv_acc/") and isinstance(v, int | float)}
        adv = " ".join(f"{k} {v:.3f}" for k, v in row.adv.items())
        self.say(row, f"epoch {row.epoch}/{row.epochs} loss {_fmt(row.loss)} "
                      f"clean {_fmt(row.clean)}" + (f" adv {adv}" if adv else ""))

    def _evaluated(self, row: Row, result: dict[str, Any], *, done: bool) -> None:
        before = row.shards_done if row.shards_total is not None else -1
        row.epoch = row.epochs
        row.shards_done = int(result.get("shards_done", 0))
        row.shards_total = int(result.get("shards_total") or 0)
        row.shards_failed = int(result.get("shards_failed", 0))
        if not done:
            row.state = "evaluating"
            total = max(row.shards_total, 1)
            # a line at the first shard and at each quarter: a log, not one line per shard
            if before < 0 or row.shards_done * 4 // total > max(before, 0) * 4 // total:
                failed = f", {row.shards_failed} failed" if row.shards_failed else ""
                self.say(row, f"evaluating: {row.shards()} shards{failed}")
            return
        row.clean = result.get("eval/clean", row.clean)
        row.union = [(k.split("/")[2], v, result.get(f"eval/groups/{k.split('/')[2]}/average"))
                     for k, v in result.items()
                     if k.startswith("eval/groups/") and k.endswith("/union")]

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info: Any) -> None:
        self._end(trial, "done")
        row = self._row(trial)
        if row is not None:
            unions = ", ".join(f"{g} union {u:.3f} / average {_fmt(a)}" for g, u, a in row.union)
            self.say(row, f"done in {row.elapsed()}: {row.shards()} shards, clean "
                          f"{_fmt(row.clean)}" + (f", {unions}" if unions else ""))

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
