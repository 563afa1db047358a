"""`mpo sweep` on the shared local Ray cluster (2 CPUs): a test-sized toy grid end to end with
evaluation fan-out, injected faults (a trial that fails mid-training, an evaluation worker that
dies), resume, and resources the cluster lacks. A driver killed or interrupted mid-sweep and
results files damaged on disk: tests/test_sweep_faults.py; lost nodes: tests/test_multinode.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SUITE = """
name: toy-test
dataset: toy
dataset_params: {d: 99, alpha: 2.0}
seed: 0
n_test: 40
groups:
  toy: {families: [linf, l1], affine: []}
attacks:
  - {name: linf-pgd, kind: first-order, spec: {type: linf, epsilon: 0.4020151261036849, k: 5}}
  - {name: l1-slide, kind: first-order, spec: {type: l1, epsilon: 2.0, k: 5}}
"""

GRID = """
name: toy-test
description: test-sized toy grid
seeds: [0]
evaluation:
  toy: {{suite: suite.yaml, n_test: 40, shard_size: 20}}
experiments:
  toy:
    families: [linf, l1]
    train:
      dataset: {{name: toy, params: {{d: 99, alpha: 2.0, n_train: 400, n_test: 100}}}}
      model: {{name: linear}}
      optimizer: {{name: adam, lr: 0.01}}
      epochs: {epochs}
      batch_size: 100
    attacks:
      linf: {{type: linf, epsilon: 0.4020151261036849, k: 3}}
      l1: {{type: l1, epsilon: 2.0, k: 3}}
    models:
{models}
"""
THREE = """      Nat: {strategy: nat}
      Adv_inf: {strategy: single, attacks: [linf]}
      Adv_max: {strategy: max, attacks: [linf, l1]}"""

# A trial's placement group: half a CPU to train, half a CPU for one evaluation worker, so two
# trials run at once on the 2-CPU test cluster.
SMALL = ["--cpus-per-trial", "0.5", "--eval-workers", "1", "--cpus-per-eval-worker", "0.5"]


def write_grid(folder: Path, *, epochs: int = 3, models: str = THREE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(SUITE)
    path = folder / "grid.yaml"
    path.write_text(GRID.format(epochs=epochs, models=models))
    return path


def read_rows(run_dir: Path):
    import pandas as pd

    files = sorted((run_dir / "results").glob("*/*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True), files


@pytest.fixture(scope="module")
def faulty_run(ray_cluster, tmp_path_factory, monkeypatch_module):
    """One sweep of three toy models in which Adv_inf fails after epoch 2 (Tune restarts it from
    its checkpoint) and Nat's first evaluation worker dies (Ray retries the task)."""
    root = tmp_path_factory.mktemp("sweep")
    grid = write_grid(root)
    monkeypatch_module.setenv(
        "MPO_TEST_FAULTS",
        json.dumps({"train_fail_after_epoch": 2, "train_fail_model": "Adv_inf",
                    "eval_crash_model": "Nat"}),
    )
    t0 = time.time()
    result = CliRunner().invoke(
        main, ["sweep", str(grid), "--storage", str(root / "runs"), "--name", "faulty",
               "--max-failures", "2", *SMALL],
    )
    seconds = time.time() - t0
    assert result.exit_code == 0, result.output + repr(result.exception)
    return root / "runs" / "faulty", result.output, seconds


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_toy_sweep_writes_the_run_folder(faulty_run):
    run_dir, output, seconds = faulty_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    run = json.loads((run_dir / "run.json").read_text())
    assert (run_dir / "grid.yaml").read_text().startswith("\nname: toy-test")
    assert {"name", "created", "mpo_version", "git_commit", "versions", "hardware", "command"} <= set(run)
    assert run["versions"]["ray"] and run["versions"]["torch"]
    first = run["sweeps"][0]  # the driver's own record of how long the sweep took
    assert first["resume"] is False and first["trial_states"] == {"done": 3}
    assert 0 < first["wall_seconds"] <= round(seconds, 1)  # recorded to 0.1 s
    assert first["finished"] >= first["started"]
    labels = sorted(t["label"] for t in manifest["trials"].values())
    assert labels == ["Adv_inf", "Adv_max", "Nat"]
    assert manifest["groups"]["toy"]["families"] == ["linf", "l1"]
    assert len(manifest["shards"]) == 3 * 2 * 2  # trials x attacks x shards of 20 points
    for mid in manifest["trials"]:
        trial = run_dir / "trials" / mid
        assert (trial / "checkpoint.pt").exists() and (trial / "state.pt").exists()
        record = json.loads((trial / "trial.json").read_text())
        assert record["state"] == "done", record
    assert "results" in output and str(run_dir) in output
    # the injected failure is one line (Tune restarts the trial), not Tune's traceback
    assert "Adv_inf: trial failed (InjectedFault: injected training failure after epoch 2" in output
    assert "Traceback" not in output


def test_every_row_once_and_summary_reported(faulty_run):
    run_dir, _, _ = faulty_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rows, files = read_rows(run_dir)
    assert len(files) == len(manifest["shards"])
    assert len(rows) == 3 * 2 * 40
    assert not rows.duplicated(["model_id", "attack", "index"]).any()
    assert set(rows["model_id"]) == set(manifest["trials"])
    for mid, trial in manifest["trials"].items():
        record = json.loads((run_dir / "trials" / mid / "trial.json").read_text())
        summary = record["summary"]
        sub = rows[rows["model_id"] == mid]
        robust = sub.groupby("index")["robust"].all()
        assert summary["groups"]["toy"]["union"] == pytest.approx(robust.mean())
        assert 0.0 <= summary["groups"]["toy"]["average"] <= 1.0
        assert summary["label"] == trial["label"]
    # the summary was reported to Tune (the last row of the trial's result.json)
    results = list((run_dir / "tune").glob("driver-1/*/result.json"))
    assert len(results) == 3
    last = [json.loads(r.read_text().strip().splitlines()[-1]) for r in results]
    assert all(r["phase"] == "done" and "eval/groups/toy/union" in r for r in last)


def test_failed_trial_resumed_from_its_checkpoint(faulty_run):
    run_dir, _, _ = faulty_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (mid,) = [m for m, t in manifest["trials"].items() if t["label"] == "Adv_inf"]
    record = json.loads((run_dir / "trials" / mid / "trial.json").read_text())
    assert record["attempts"] == 2
    assert record["restored_from_tune_epoch"] == 2  # Tune's checkpoint of epoch 2
    assert record["resumed_from_epochs"] == [2]  # training went on from state.pt, epoch 2
    metrics = (run_dir / "trials" / mid / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [1, 2, 3]
    others = [json.loads((run_dir / "trials" / m / "trial.json").read_text())
              for m in manifest["trials"] if m != mid]
    assert all(r["attempts"] == 1 and r["resumed_from_epochs"] == [] for r in others)


def test_trials_and_tasks_record_where_they_ran_and_their_threads(faulty_run):
    """Half-CPU bundles (SMALL) run one torch thread, in the trial and in each task."""
    run_dir, _, _ = faulty_run
    for trial in (run_dir / "trials").iterdir():
        record = json.loads((trial / "trial.json").read_text())
        for p in record["placements"]:
            assert p["resources"] == {"CPU": 0.5} and p["gpu_ids"] == [] and p["device"] == "cpu"
            assert p["threads"] == {"intra_op": 1, "inter_op": 1} and p["node_id"]
        assert len(record["placements"]) == record["attempts"]
        assert record["epoch_runs"] == 3  # the restarted trial did not train an epoch twice
        sides = sorted((trial / "shards").glob("*.json"))
        assert len(sides) == 4
        for side in sides:
            runs = json.loads(side.read_text())["runs"]
            assert runs[-1]["computed"] is True and runs[-1]["threads"]["intra_op"] == 1
            assert runs[-1]["resources"] == {"CPU": 0.5}


def test_sweep_records_how_busy_it_kept_the_cpus(faulty_run):
    """run.json's driver run: the CPU-seconds of training and evaluation from the trials' and
    tasks' own records, over wall x CPUs; each training attempt is an interval."""
    run_dir, output, _ = faulty_run
    first = json.loads((run_dir / "run.json").read_text())["sweeps"][0]
    u = first["utilisation"]
    assert u["cpus"] == 2 and u["wall_seconds"] == first["wall_seconds"]
    assert set(u["by_kind"]) == {"train", "evaluate"} and min(u["by_kind"].values()) > 0
    assert u["busy_cpu_seconds"] == pytest.approx(sum(u["by_kind"].values()), abs=0.2)
    assert 0 < u["fraction"] <= 1
    assert u["fraction"] == pytest.approx(u["busy_cpu_seconds"] / (2 * u["wall_seconds"]),
                                          abs=0.002)
    assert f"this driver run: busy {100 * u['fraction']:.0f}% of 2 CPUs" in output
    for trial in (run_dir / "trials").iterdir():
        record = json.loads((trial / "trial.json").read_text())
        runs = record["train_runs"]  # one per attempt; the failed one ended at its epoch 2
        assert len(runs) == record["attempts"] and all(r["finished"] >= r["started"] for r in runs)


def test_dead_evaluation_worker_is_retried(faulty_run):
    run_dir, _, _ = faulty_run
    assert (run_dir / "faults" / "eval-Nat").exists()  # the worker did die once
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (mid,) = [m for m, t in manifest["trials"].items() if t["label"] == "Nat"]
    record = json.loads((run_dir / "trials" / mid / "trial.json").read_text())
    assert record["attempts"] == 1 and record["failed_shards"] == []
    assert len(list((run_dir / "results" / mid).glob("*.parquet"))) == 4
    runs = [json.loads(p.read_text())["runs"] for p in (run_dir / "trials" / mid / "shards").glob("*")]
    died = [r for r in runs if len(r) == 2]  # the task whose worker died, then its retry
    assert len(died) == 1 and "finished" not in died[0][0] and died[0][1]["computed"] is True


def test_status_reads_the_run_without_ray(faulty_run):
    run_dir, _, _ = faulty_run
    result = CliRunner().invoke(main, ["status", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "3 done" in result.output and "shards 12/12" in result.output
    assert "Adv_max" in result.output


def test_resume_of_a_finished_run_redoes_nothing(faulty_run):
    run_dir, _, _ = faulty_run
    before = {p: p.stat().st_mtime_ns for p in run_dir.glob("results/*/*.parquet")}
    ckpts = {p: p.stat().st_mtime_ns for p in run_dir.glob("trials/*/checkpoint.pt")}
    result = CliRunner().invoke(main, ["sweep", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("results/*/*.parquet")} == before
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("trials/*/checkpoint.pt")} == ckpts
    sweeps = json.loads((run_dir / "run.json").read_text())["sweeps"]
    assert [s["resume"] for s in sweeps] == [False, True]
    assert sweeps[1]["trial_states"] == {"done": 3}
    # nothing ran again: the resumed driver counts no work (the first run's is outside it)
    assert sweeps[1].get("utilisation", {}).get("busy_cpu_seconds", 0) == 0


def test_resume_with_a_changed_grid_is_refused(faulty_run, tmp_path):
    run_dir, _, _ = faulty_run
    changed = write_grid(tmp_path, epochs=4)
    result = CliRunner().invoke(main, ["sweep", str(changed), "--resume", str(run_dir)])
    assert result.exit_code != 0
    assert "differs from the grid this run was started with" in result.output
    assert "trial Nat: training config changed (epochs: 3 -> 4)" in result.output


def test_gpu_on_a_cpu_only_cluster_is_refused_at_once(ray_cluster, tmp_path):
    grid = write_grid(tmp_path)
    t0 = time.time()
    result = CliRunner().invoke(main, ["sweep", str(grid), "--storage", str(tmp_path / "runs"),
                                       "--gpus-per-trial", "1"])
    assert time.time() - t0 < 15
    assert result.exit_code != 0
    assert "has no GPUs" in result.output and "--gpus-per-trial 0" in result.output
    assert not (tmp_path / "runs").exists()  # nothing started, no run folder


def test_a_trial_larger_than_the_cluster_is_refused(ray_cluster, tmp_path):
    grid = write_grid(tmp_path)
    result = CliRunner().invoke(main, ["sweep", str(grid), "--storage", str(tmp_path / "runs"),
                                       "--eval-workers", "4"])
    assert result.exit_code != 0
    assert "in all" in result.output and "--eval-workers" in result.output
