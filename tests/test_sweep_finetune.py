"""Models that start from models, in one sweep on the shared local Ray cluster: the shipped
``toy-finetune`` grid (the README's example) with its driver killed while the parent trains,
then resumed (nothing trained twice; each child starts after its parent's checkpoint exists;
the soups after both ingredients), and a parent that fails for good (its descendants are
reported not run, with the reason, while independent work finishes)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from tests.test_sweep import SMALL, write_grid
from tests.test_sweep_faults import trial_records

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _started(record: dict) -> float:
    return dt.datetime.fromisoformat(record["placements"][0]["started"]).timestamp()


@pytest.fixture(scope="module")
def resumed_run(ray_cluster, tmp_path_factory):
    """``mpo sweep toy-finetune`` killed (SIGKILL) while Adv_inf trains, then ``--resume``d."""
    root = tmp_path_factory.mktemp("finetune")
    run_dir = root / "runs" / "tft"
    address = ray_cluster.get_runtime_context().gcs_address
    env = {**os.environ, "MPO_TEST_FAULTS": json.dumps({"train_sleep": 1.5})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "sweep", "toy-finetune", "--address", address,
         "--storage", str(root / "runs"), "--name", "tft", *SMALL],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True, cwd=root)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            recs = trial_records(run_dir) if run_dir.is_dir() else {}
            if any(r.get("label") == "Adv_inf" and r.get("epoch_runs", 0) >= 1
                   for r in recs.values()):
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        else:
            pytest.fail("Adv_inf did not finish an epoch in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    before = trial_records(run_dir)
    time.sleep(2)  # the killed driver's actors are gone before the resume starts
    t0 = time.time()
    result = CliRunner().invoke(main, ["sweep", "--resume", str(run_dir), "--address", address])
    seconds = time.time() - t0
    assert result.exit_code == 0, result.output + repr(result.exception)
    return run_dir, before, seconds


def test_killed_mid_parent_then_resumed_trains_nothing_twice(resumed_run):
    run_dir, before, seconds = resumed_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    labels = {mid: t["label"] for mid, t in manifest["trials"].items()}
    # when the driver died only the parent had started: no child had a record
    assert {labels[m] for m in before} == {"Adv_inf"}
    assert before and all(r.get("state") == "training" for r in before.values())
    records = trial_records(run_dir)
    assert {r["state"] for r in records.values()} == {"done"} and len(records) == 7
    by_label = {labels[m]: r for m, r in records.items()}
    assert by_label["Adv_inf"]["epoch_runs"] == 3  # its 3 epochs, each once, over two drivers
    assert by_label["Adv_inf"]["resumed_from_epochs"]  # the second driver went on from state.pt
    for label in ("FT_eat", "FT_inf", "FT_1"):
        assert by_label[label]["epoch_runs"] == 1 and by_label[label]["attempts"] == 1
    print(f"resumed toy-finetune: {seconds:.0f} s; Adv_inf epochs run over both drivers: "
          f"{by_label['Adv_inf']['epoch_runs']}")


def test_children_start_after_their_parents_checkpoints(resumed_run):
    run_dir, _, _ = resumed_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    records = trial_records(run_dir)
    for mid, t in manifest["trials"].items():
        for parent in t.get("parents", []):
            ckpt = run_dir / "trials" / parent / "checkpoint.pt"
            assert ckpt.stat().st_mtime <= _started(records[mid]), (t["label"], parent)
    soups = [m for m, t in manifest["trials"].items() if t["strategy"] == "soup"]
    assert len(soups) == 3
    for mid in soups:  # a soup's cost: its ingredients' lineages, Adv_inf once
        cost = records[mid]["train_cost"]
        assert len(cost["lineage"]) == 3 and cost["fwd_per_example"] == 0
        assert cost["with_ancestors"]["passes"] == pytest.approx(
            sum(v["passes"] for v in cost["lineage"].values()))


def test_status_shows_the_tree(resumed_run):
    run_dir, _, _ = resumed_run
    result = CliRunner().invoke(main, ["status", str(run_dir)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "models that start from models" in out
    tree = out[out.index("models that start from models"):]
    assert tree.index("Adv_inf") < tree.index("FT_inf") < tree.index("Soup_inf_1(0.5,0.5)")
    assert "(with FT_1): done" in tree


FAILING = """      A: {strategy: single, attacks: [linf]}
      B: {strategy: single, attacks: [l1], init: A, train: {epochs: 0.5}}
      C: {strategy: nat, init: A, train: {epochs: 0.5}}
      D: {strategy: nat}
    soups:
      S: {models: [B, C], weights: [[0.5, 0.5]]}"""


def test_a_parent_that_fails_for_good_leaves_its_children_not_run(ray_cluster, tmp_path,
                                                                  monkeypatch):
    grid = write_grid(tmp_path / "grid", epochs=2, models=FAILING)
    monkeypatch.setenv("MPO_TEST_FAULTS", json.dumps({"train_fail_always_model": "A"}))
    result = CliRunner().invoke(main, ["sweep", str(grid), "--storage", str(tmp_path / "runs"),
                                       "--name", "f", "--max-failures", "0", *SMALL])
    assert result.exit_code == 1
    assert "4 of 5 trials did not finish" in result.output
    run_dir = tmp_path / "runs" / "f"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    by_label = {t["label"]: json.loads((run_dir / "trials" / m / "trial.json").read_text())
                for m, t in manifest["trials"].items()}
    assert by_label["D"]["state"] == "done"  # independent work is not held back
    assert by_label["A"]["state"] == "error"
    for label in ("B", "C"):
        assert by_label[label]["state"] == "not_run"
        assert "not run: its parent 'A'" in by_label[label]["error"]
        assert "failed: InjectedFault" in by_label[label]["error"]
        assert "placements" not in by_label[label]  # never started
    soup = by_label["S(0.5,0.5)"]
    assert soup["state"] == "not_run" and "its parent 'B'" in soup["error"]
    status = CliRunner().invoke(main, ["status", str(run_dir)], env={"COLUMNS": "200"})
    assert "not_run" in status.output and "B (" in status.output
