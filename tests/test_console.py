"""What the CLI prints, on a terminal and elsewhere: the sweep's live table at 80 x 24 (every
number whole, every model shown or counted), the plain event lines a file gets, the CLI's tables
written to a pipe (full width, no word broken), and the dashboard's token line (only when Ray
uses a token)."""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.console import Col, fitted_table, make_console
from orchestrator.plan import load_plan
from orchestrator.progress import LiveTable, Row, live_view

ROOT = Path(__file__).resolve().parents[1]
BOX = re.compile(r"[│┃┏┓┗┛┡┩└┘━─]")


def paper_rows() -> list[Row]:
    """The 53 trials of paper-grid in every state a sweep shows, with real-looking numbers."""
    plan, _, _ = load_plan("paper-grid")
    rows = []
    for i, (mid, t) in enumerate(plan.trials.items()):
        r = Row(mid, t.label, ",".join(t.groups), math.ceil(t.config["epochs"]))
        if i < 8:
            r.state, r.epoch, r.loss, r.clean = "done", r.epochs, 0.034, 0.991
            r.shards_done = r.shards_total = 32
            r.union = [(g, 0.034 + k / 10, 0.512) for k, g in enumerate(t.groups)]
            r.started, r.ended = time.time() - 500, time.time() - 100 + i
        elif i < 11:
            r.state, r.epoch, r.loss, r.clean = "training", 3, 1.234, 0.912
            r.adv, r.started = {"linf": 0.45, "l1": 0.3}, time.time() - 50
        elif i == 11:
            r.state, r.shards_done, r.shards_total = "evaluating", 2, 32
            r.started, r.errors = time.time() - 60, 1
        rows.append(r)
    return rows


def render(rows: list[Row], width: int, height: int) -> str:
    console = Console(record=True, width=width, height=height, file=io.StringIO())
    console.print(live_view(rows, width=width, height=height, title="mpo sweep paper-grid"))
    return console.export_text()


def test_live_table_at_80_by_24_keeps_numbers_whole_and_counts_what_it_leaves_out():
    rows = paper_rows()
    text = render(rows, 80, 24)
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines), text
    table = [line for line in lines if line.startswith("│")]
    assert len(table) == 24 - 6  # the rows that fit; the others are counted below
    # the running trials are all shown, whatever their place in the grid
    for r in rows:
        if r.state in ("training", "evaluating"):
            assert any(f"│ {r.label} " in line and r.state in line for line in table), r.label
    assert "evaluating ↻1" in text and "shards 2/32" in text and "epoch 3/10" in text
    # numbers whole: a cell is never folded onto a second line
    assert "0.034" in text and "shards 32/32" in text
    assert all(len(n.split(".")[1]) == 3 for n in re.findall(r"\d+\.\d+", text))
    cells = [c.strip() for line in table for c in line.strip("│").split("│")]
    assert all(not c.endswith("…") for c in cells), cells
    # every model shown or counted: shown rows + "+N more" = 53
    m = re.search(r"^\+(\d+) more: (.*?) \| 53 trials: ", lines[-1])
    assert m, lines[-1]
    assert len(table) + int(m.group(1)) == len(rows)
    hidden = rows[len(table):]  # the paper-grid's last trials: all pending here
    assert m.group(2) == f"{len(hidden)} pending"


def test_live_table_shows_fewer_columns_as_the_terminal_narrows():
    rows = paper_rows()[:9]
    wide, mid, narrow = render(rows, 250, 40), render(rows, 120, 40), render(rows, 80, 40)
    assert "adv (train)" in wide and rows[0].model_id in wide and "linf=0.45" in wide
    assert "adv (train)" not in mid and "loss" in mid
    for text in (narrow, mid):
        assert all(len(line) <= (80 if text is narrow else 120) for line in text.splitlines())
    # 80 columns: one progress column and the models, states and results, each whole
    header = next(line for line in narrow.splitlines() if line.startswith("┃"))
    assert [h.strip() for h in header.strip("┃").split("┃")][:3] == ["model", "state", "progress"]
    for r in rows:
        assert f" {r.label} " in narrow
    assert "mnist-lp 0.034" in narrow


def test_fitted_table_drops_the_least_important_columns_and_says_so():
    cols = [Col("model"), Col("id", "id", 2), Col("groups", drop=3), Col("clean", "num"),
            Col("description", "text")]
    rows = [["Adv_max", "mnist-max-linf_l1_l2-0123abcd", "mnist-lp,mnist-rt", "0.991",
             "a long free text that may wrap at its spaces without breaking a word"]]
    console = Console(record=True, width=66, file=io.StringIO())
    console.print(fitted_table(cols, rows, width=66, title="t"))
    text = console.export_text()
    assert all(len(line) <= 66 for line in text.splitlines()), text
    assert "groups" not in text.splitlines()[2] and "left out at this terminal width: groups" in text
    assert "mnist-max-linf_l1_l2-0123abcd" in text and "0.991" in text and "Adv_max" in text
    words = re.findall(r"[a-z]+", "".join(line.split("│")[-2] for line in text.splitlines()
                                          if line.count("│") > 2))
    assert {"breaking", "without", "spaces"} <= set(words)


def test_plain_console_is_full_width(monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a file, not a terminal
    console = make_console()
    assert not console.is_terminal and console.width > 1000
    console.print(fitted_table([Col("groups"), Col("epochs", "num")], [["mnist-lp", "10"]],
                               width=console.width))
    assert "┃ groups   ┃ epochs ┃" in sys.stdout.getvalue()


def test_plain_event_lines_in_a_file():
    from ray.tune.experiment import Trial

    out = io.StringIO()
    console = Console(file=out, width=4096)
    plan, _, _ = load_plan("toy")
    mid, t = next((m, t) for m, t in plan.trials.items() if t.label == "Adv_max")
    table = LiveTable({mid: t.to_dict()}, console=console, title="mpo sweep toy")
    trial = Trial("run_trial", config={"model_id": mid}, stub=True)
    table.start()
    table.on_trial_start(0, [trial], trial)
    table.on_trial_result(0, [trial], trial, {"phase": "train", "epoch": 1, "train_loss": 1.2345,
                                              "clean_acc": 0.9123, "adv_acc/linf": 0.5})
    for done in range(1, 9):
        table.on_trial_result(0, [trial], trial, {"phase": "eval", "shards_done": done,
                                                  "shards_total": 8})
    table.on_trial_result(0, [trial], trial, {"phase": "done", "shards_done": 8,
                                              "shards_total": 8, "eval/clean": 0.98,
                                              "eval/groups/toy/union": 0.306,
                                              "eval/groups/toy/average": 0.322})
    table.on_trial_complete(0, [trial], trial)
    table.stop()
    lines = out.getvalue().splitlines()
    stamp = r"^\[\d\d:\d\d:\d\d\] Adv_max "
    assert re.match(stamp + rf"\({mid}, groups toy\) started: 3 epochs$", lines[0])
    assert re.match(stamp + r"epoch 1/3 loss 1\.234 clean 0\.912 adv linf 0\.500$", lines[1])
    # evaluation: the first shard and each quarter, not a line per shard
    assert [re.sub(stamp, "", line) for line in lines[2:7]] == [
        f"evaluating: {n}/8 shards" for n in (1, 2, 4, 6, 8)]
    assert re.match(stamp + r"done in 0:0\d: 8/8 shards, clean 0\.980, toy union 0\.306 / "
                    r"average 0\.322$", lines[7])
    assert len(lines) == 8 and not BOX.search(out.getvalue())  # no live table in a file


def test_live_table_on_a_terminal_fits_it():
    """The live display itself (rich.Live on an 80 x 24 terminal) through a trial's events."""
    from ray.tune.experiment import Trial

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80, height=24, color_system=None)
    plan, _, _ = load_plan("paper-grid")
    table = LiveTable({m: t.to_dict() for m, t in plan.trials.items()}, console=console,
                      title="mpo sweep paper-grid: /a/run/folder/that/is/long/enough/to/be/cut")
    # the grid's last trained model (soups follow it): below the screen in grid order
    mid = [m for m, t in plan.trials.items() if t.strategy != "soup"][-1]
    trial = Trial("run_trial", config={"model_id": mid}, stub=True)
    table.start()
    table.on_trial_start(0, [trial], trial)
    table.on_trial_result(0, [trial], trial, {"phase": "train", "epoch": 2, "train_loss": 0.25,
                                              "clean_acc": 0.875})
    table.stop()
    final = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()).split("\r")[-1]
    lines = final.splitlines()[-24:]
    assert all(len(line) <= 80 for line in lines), final
    t = plan.trials[mid]
    epochs = math.ceil(t.config["epochs"])  # a fine-tune's fraction: the loop's epochs
    assert any(f"│ {t.label} " in line and "training" in line and f"2/{epochs}" in line
               and "0.250" in line for line in lines), final
    assert re.search(r"\+\d+ more: \d+ pending \| 53 trials: 1 training, 52 pending", final)


def _piped(*args: str) -> str:
    """``mpo ARGS`` with stdout to a pipe, as in a CI log (no COLUMNS, no terminal)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _assert_unfolded(text: str, words: list[str]) -> None:
    lines = text.splitlines()
    for word in words:
        assert re.search(rf"\b{re.escape(word)}\b", text), word
    assert not any(len(line) == 80 and BOX.search(line) for line in lines), "folded to 80"


@pytest.mark.slow
def test_dry_run_and_grids_to_a_pipe_are_not_folded():
    plan, _, _ = load_plan("paper-grid")
    text = _piped("sweep", "paper-grid", "--dry-run")
    _assert_unfolded(text, ["groups", "epochs", "strategy", "eval attacks", "trained on"])
    for mid, t in plan.trials.items():  # one line per trial, its id and label whole
        assert re.search(rf"│ {re.escape(t.label)} +│ {re.escape(mid)} +│", text), mid
    assert "left out" not in text
    text = _piped("grids")
    _assert_unfolded(text, ["description", "shards", "paper-grid", "mnist-mini"])
    assert max(len(line) for line in text.splitlines()) > 100  # descriptions on one line


def test_dashboard_line_names_the_token_only_when_one_is_used():
    from orchestrator.commands.sweep import dashboard_line

    url = "http://127.0.0.1:8265"
    assert dashboard_line(url, token=False) == f"Ray dashboard: {url}"
    with_token = dashboard_line(url, token=True)
    assert with_token.startswith(f"Ray dashboard: {url} ") and "ray get-auth-token" in with_token


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "expected"), [("disabled", False), ("token", True)])
def test_token_auth_in_use_follows_ray_auth_mode(mode, expected):
    """How the installed Ray decides (``RAY_AUTH_MODE``), read in a fresh process."""
    code = ("from orchestrator.commands.sweep import token_auth_in_use; "
            "print(token_auth_in_use())")
    env = {**os.environ, "RAY_AUTH_MODE": mode, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == str(expected)
