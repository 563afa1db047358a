"""A driver stopped mid-sweep, and results files damaged on disk, on the shared local Ray cluster.

- SIGKILL or SIGINT to `mpo sweep` once one trial has finished and another is training; SIGINT
  ends the driver within seconds, with one line on stderr that says how to resume. Then
  `mpo sweep --resume` finishes the run: finished trials are not run again, unfinished ones go
  on from their last epoch (no epoch is trained twice), no shard on disk is computed again, and
  every row is there once.
- A finished run whose results files were then truncated or overwritten in place (a storage
  fault, not an mpo crash): `mpo status` and `mpo report` name both files, and
  `mpo sweep --resume` computes exactly those two shards again, with the same rows as before.

Each test prints the figures of its fault (rows expected, found and duplicated; trials and
epochs trained again; shards computed again).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from tests.test_sweep import SMALL, THREE, read_rows, write_grid

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS = 4
ROWS = 3 * 2 * 40  # trials x attacks x test points


def trial_records(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("trials/*/trial.json")}


def mtimes(paths) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


def stop_mid_sweep(ray_cluster, tmp_path: Path, name: str, sig: signal.Signals):
    """`mpo sweep` in a subprocess on the session cluster, sent ``sig`` once a trial is done and
    another is training; (run dir, exit status, stderr, seconds from the signal to the exit)."""
    grid = write_grid(tmp_path / "grid", epochs=EPOCHS, models=THREE)
    run_dir = tmp_path / "runs" / name
    address = ray_cluster.get_runtime_context().gcs_address
    env = {**os.environ, "MPO_TEST_FAULTS": json.dumps({"train_sleep": 1.0})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "sweep", str(grid), "--address", address,
         "--storage", str(tmp_path / "runs"), "--name", name, *SMALL],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            states = [r.get("state") for r in trial_records(run_dir).values()] \
                if run_dir.is_dir() else []
            if "done" in states and "training" in states:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.3)
        else:
            pytest.fail("the sweep did not reach a finished trial in time")
        t0 = time.time()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        seconds = time.time() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return run_dir, proc.returncode, err, seconds


def resume_and_count(run_dir: Path) -> dict[str, Any]:
    """`mpo sweep --resume`, checked: every row once, finished trials not run again, no epoch
    trained twice, no shard on disk computed again. Returns the figures and the output."""
    before = trial_records(run_dir)
    finished = {mid for mid, r in before.items() if r.get("state") == "done"}
    checkpoints = mtimes(run_dir.glob("trials/*/checkpoint.pt"))
    shards = mtimes(run_dir.glob("results/*/*.parquet"))
    result = CliRunner().invoke(main, ["sweep", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows, files = read_rows(run_dir)
    after = trial_records(run_dir)
    figures = {
        "rows_expected": ROWS, "rows_found": len(rows),
        "rows_duplicated": int(rows.duplicated(["model_id", "attack", "index"]).sum()),
        "trials_finished_before": len(finished),
        "trials_run_again_of_finished": sum(after[m]["attempts"] != before[m]["attempts"]
                                            for m in finished),
        "checkpoints_rewritten": sum(p.stat().st_mtime_ns != t for p, t in checkpoints.items()),
        "epochs_trained_twice": sum(r["epoch_runs"] for r in after.values()) - 3 * EPOCHS,
        "shards_on_disk_before": len(shards),
        "shards_computed_again": sum(p.stat().st_mtime_ns != t for p, t in shards.items()),
    }
    print(f"\n{run_dir.name}: {figures}")
    assert len(files) == 12 and figures["rows_found"] == ROWS
    assert figures["rows_duplicated"] == 0
    assert figures["trials_run_again_of_finished"] == 0 and figures["checkpoints_rewritten"] == 0
    assert figures["epochs_trained_twice"] == 0 and figures["shards_computed_again"] == 0
    for mid, rec in after.items():
        assert rec["state"] == "done"
        epochs = [json.loads(m)["epoch"] for m in
                  (run_dir / "trials" / mid / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, EPOCHS + 1))
    return {**figures, "output": result.output}


def test_killed_driver_resumes_without_redoing_anything(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.delenv("MPO_TEST_FAULTS", raising=False)  # only the subprocess sleeps per epoch
    run_dir, code, _, _ = stop_mid_sweep(ray_cluster, tmp_path, "killed", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert (run_dir / "driver.lock").exists()  # a killed driver leaves its lock behind
    figures = resume_and_count(run_dir)
    assert "took over" in figures["output"] and "from a driver that is gone: pid" in figures["output"]
    assert not (run_dir / "driver.lock").exists()


@pytest.fixture(scope="module")
def interrupted(ray_cluster, tmp_path_factory):
    """A sweep stopped with SIGINT mid-way: (run dir, exit status, stderr, seconds to exit)."""
    mp = pytest.MonkeyPatch()
    mp.delenv("MPO_TEST_FAULTS", raising=False)
    try:
        yield stop_mid_sweep(ray_cluster, tmp_path_factory.mktemp("sigint"), "sigint",
                             signal.SIGINT)
    finally:
        mp.undo()


def test_sigint_ends_the_driver_at_once_with_one_line(interrupted):
    run_dir, code, err, seconds = interrupted
    print(f"\nSIGINT: exit {code} after {seconds:.1f} s; stderr {err!r}")
    assert code == 128 + signal.SIGINT
    assert seconds < 15
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"interrupted (SIGINT); everything finished is saved. Resume with: "
                     f"mpo sweep --resume {run_dir}"]
    assert not (run_dir / "driver.lock").exists()  # an interrupted driver lets go of the folder
    sweeps = json.loads((run_dir / "run.json").read_text())["sweeps"]
    assert sweeps[-1]["interrupted"] == "SIGINT"
    assert "utilisation" not in sweeps[-1]  # a signal's exit reads no shard records
    status = CliRunner().invoke(main, ["status", str(run_dir)])
    assert status.exit_code == 0 and f"continue with: mpo sweep --resume {run_dir}" in status.output


@pytest.fixture(scope="module")
def resumed(interrupted):
    run_dir = interrupted[0]
    return run_dir, resume_and_count(run_dir)


def test_resume_after_sigint_finishes_without_redoing_anything(resumed):
    run_dir, figures = resumed
    assert "trials finished" in figures["output"]
    sweeps = json.loads((run_dir / "run.json").read_text())["sweeps"]
    assert [s["resume"] for s in sweeps] == [False, True]
    assert sweeps[1]["trials_run"] == 3 - figures["trials_finished_before"]
    assert sweeps[1]["trial_states"] == {"done": 3}
    if sweeps[1]["trials_run"]:  # the resumed driver's own work, within its own window
        u = sweeps[1]["utilisation"]
        assert u["busy_cpu_seconds"] > 0 and 0 < u["fraction"] <= 1


def silently_wrong(path: Path) -> bytes:
    """``path``'s bytes with 4 bytes zeroed inside a column chunk such that parquet still reads
    the file without an error, with other values (what a storage fault can do: no page
    checksums are written, so only the digest recorded by the trial shows it)."""
    import pyarrow.parquet as pq

    original = pq.read_table(path)
    data = path.read_bytes()
    chunk = pq.ParquetFile(path).metadata.row_group(0)
    for col in range(chunk.num_columns):
        meta = chunk.column(col)
        start = meta.dictionary_page_offset or meta.data_page_offset
        for pos in range(start, start + meta.total_compressed_size - 4):
            bad = data[:pos] + bytes(4) + data[pos + 4:]
            if bad == data:
                continue
            try:
                if not pq.read_table(pa_buffer(bad)).equals(original):
                    return bad
            except Exception:  # parquet noticed this one: look for one it does not notice
                continue
    pytest.fail(f"no silent corruption found in {path}")


def pa_buffer(data: bytes):
    import pyarrow as pa

    return pa.BufferReader(data)


@pytest.fixture(scope="module")
def damaged(resumed):
    """The finished run with one results file truncated and another silently corrupted in
    place (parquet reads it, with wrong values)."""
    run_dir, _ = resumed
    files = sorted(run_dir.glob("results/*/*.parquet"))
    truncated, overwritten = files[0], files[-1]
    assert truncated.parent != overwritten.parent  # two trials
    rows_before = read_rows(run_dir)[0]
    bad = silently_wrong(overwritten)
    with truncated.open("r+b") as f:
        f.truncate(truncated.stat().st_size // 2)
    with overwritten.open("r+b") as f:  # in place: the same file, its size unchanged
        f.write(bad)
    return run_dir, truncated, overwritten, rows_before


def test_status_and_report_name_the_damaged_files(damaged, tmp_path):
    run_dir, truncated, overwritten, _ = damaged
    status = CliRunner().invoke(main, ["status", str(run_dir)])
    assert status.exit_code == 0, status.output
    for path in (truncated, overwritten):
        assert f"{path.relative_to(run_dir)}: corrupt on disk" in status.output
    assert f"continue with: mpo sweep --resume {run_dir}" in status.output
    report = CliRunner().invoke(main, ["report", str(run_dir), "--out", str(tmp_path / "rep"),
                                       "--format", "md"])
    assert report.exit_code == 0, report.output
    text = (tmp_path / "rep" / "report.md").read_text()
    for path in (truncated, overwritten):
        rel = str(path.relative_to(run_dir))
        assert rel in report.output and f"skipped file {rel}: corrupt on disk" in text


def test_resume_computes_exactly_the_damaged_shards_again(damaged):
    run_dir, truncated, overwritten, rows_before = damaged
    records = trial_records(run_dir)
    checkpoints = mtimes(run_dir.glob("trials/*/checkpoint.pt"))
    others = mtimes(p for p in run_dir.glob("results/*/*.parquet")
                    if p not in (truncated, overwritten))
    result = CliRunner().invoke(main, ["sweep", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows, files = read_rows(run_dir)
    after = trial_records(run_dir)
    damaged_trials = {truncated.parent.name, overwritten.parent.name}
    figures = {
        "rows_expected": ROWS, "rows_found": len(rows),
        "rows_duplicated": int(rows.duplicated(["model_id", "attack", "index"]).sum()),
        "shards_damaged": 2,
        "shards_computed_again": sum(
            json.loads((run_dir / "trials" / p.parent.name / "shards" / f"{p.stem}.json")
                       .read_text())["runs"][-1]["computed"] for p in (truncated, overwritten)),
        "other_shards_rewritten": sum(p.stat().st_mtime_ns != t for p, t in others.items()),
        "trials_run_again": sorted(m for m in after if after[m]["attempts"] != records[m]["attempts"]),
        "checkpoints_rewritten": sum(p.stat().st_mtime_ns != t for p, t in checkpoints.items()),
        "epochs_trained_twice": sum(r["epoch_runs"] for r in after.values()) - 3 * EPOCHS,
    }
    print(f"\ndamaged shards: {figures}")
    for path in (truncated, overwritten):
        assert f"{path.relative_to(run_dir)}: corrupt on disk" in result.output
        assert path.with_name(path.name + ".corrupt").exists()  # set aside, not deleted
    assert len(files) == 12 and figures["rows_found"] == ROWS and figures["rows_duplicated"] == 0
    assert figures["shards_computed_again"] == 2 and figures["other_shards_rewritten"] == 0
    assert set(figures["trials_run_again"]) == damaged_trials  # to evaluate, not to train
    assert figures["checkpoints_rewritten"] == 0 and figures["epochs_trained_twice"] == 0
    key = ["model_id", "attack", "index"]
    both = rows.merge(rows_before, on=key, suffixes=("", "_before"), validate="one_to_one")
    for col in ("robust", "fooled", "adv_pred", "perturbation", "loss"):
        assert (both[col] == both[f"{col}_before"]).all(), col
    status = CliRunner().invoke(main, ["status", str(run_dir)])
    assert "corrupt" not in status.output and "shards 12/12" in status.output
