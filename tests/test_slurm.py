"""The Slurm batch script (``mpo slurm-script``) on a real Slurm cluster.

The cluster (``tests.slurm_cluster``) is two nodes on this machine, each a slurmd of its own
with one CPU: the shipped script starts the Ray head on the first node and a worker on the
second and runs the toy sweep against it; the test cancels the job once a trial is done (what a
time limit does), resumes the run through the same script, then reads the run folder and runs
``mpo report`` on it. Other jobs check the script's refusals. Needs Debian's
``slurm-wlm`` and ``munge`` and root (slurmd runs jobs as their users): skipped without them,
failed instead when ``MPO_REQUIRE_SERVERS=1`` (CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.commands.slurm import script_text
from tests.slurm_cluster import Job, SlurmCluster, can_hide_folders, free_port, missing_tools

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "orchestrator" / "slurm" / "mpo-sweep.sbatch"
#: the longest a sweep job may take (the whole toy sweep: about 4 minutes on 2 busy CPUs)
SWEEP_TIMEOUT = 900


def _unavailable(reason: str) -> None:
    if os.environ.get("MPO_REQUIRE_SERVERS") == "1":
        pytest.fail(f"MPO_REQUIRE_SERVERS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running two-node test Slurm cluster; stopped (jobs cancelled first) at the end."""
    missing = missing_tools()
    if missing:
        _unavailable(f"Slurm is not installed (missing {', '.join(missing)}; Debian: "
                     "apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        _unavailable("the Slurm test starts slurmd, which must run as root")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def job_env(slurm, tmp_path_factory):
    """What a user's shell gives sbatch: this venv's mpo and ray first on PATH, this checkout
    on PYTHONPATH; storage and a short Ray temp root of the test's own (and, per job, free Ray
    ports: ``_submit``)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="mpo-ray-", dir="/tmp"))  # short: unix sockets
    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), slurm.env["PATH"]]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "MPO_STORAGE": str(tmp_path_factory.mktemp("shared") / "runs"),
        "MPO_RAY_TMPDIR": str(ray_tmp),
    }
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _submit(slurm: SlurmCluster, env: dict[str, str], args: list[str], *,
            timeout: float = 300) -> tuple[Job, str]:
    """Submit the shipped script on two nodes and wait for its end: (the job, a failure
    message with its output and the daemons' logs)."""
    return _finish(slurm, env, _start(slurm, env, args), args, timeout=timeout)


def _start(slurm: SlurmCluster, env: dict[str, str], args: list[str]) -> str:
    env = {"MPO_RAY_PORT": str(free_port(5)), **env}
    return slurm.submit(SCRIPT, args, env=env, cwd=Path(env["MPO_STORAGE"]).parent,
                        options=["--nodes=2", f"--cpus-per-task={slurm.cpus_per_node}"])


def _finish(slurm: SlurmCluster, env: dict[str, str], job_id: str, args: list[str], *,
            timeout: float = 300) -> tuple[Job, str]:
    job = slurm.wait(job_id, Path(env["MPO_STORAGE"]).parent, timeout=timeout)
    print(f"\nslurm job {job.job_id} ({' '.join(args)}): {job.state}, exit {job.returncode}, "
          f"{job.wall_seconds:.0f} s wall")
    return job, f"job {job.job_id} output:\n{job.output[-6000:]}\n{slurm.logs()}"


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and proc.name.isdigit() and int(proc.name) != os.getpid():
            found.append(f"{proc.name}: {cmd[:200]}")
    return found


def _leftovers(env: dict[str, str]) -> list[str]:
    """Processes of a job that ended: Ray's (their temp root) or mpo's (the storage folder)."""
    return _processes_mentioning(env["MPO_RAY_TMPDIR"]) + _processes_mentioning(env["MPO_STORAGE"])


def _check_run_folder(run_dir: Path) -> None:
    """Every results file the manifest expects is there and sound; every trial is done."""
    from jobs.run_folder import Manifest
    from orchestrator.runfolder import collect_status

    manifest = json.loads((run_dir / "manifest.json").read_text())
    expected = Manifest.from_dict(manifest).expected_files()
    assert sum(map(len, expected.values())) == len(manifest["shards"]) > 0
    missing = [f"{mid}/{n}" for mid, names in expected.items() for n in names
               if not (run_dir / "results" / mid / n).is_file()]
    assert not missing, f"results files missing: {missing[:5]}"
    st = collect_status(run_dir)
    assert not st.problems, st.problems
    assert [t.state for t in st.trials] == ["done"] * len(manifest["trials"])


def _check_report(run_dir: Path, env: dict[str, str], slurm: SlurmCluster) -> None:
    """``mpo report`` writes report.md; each toy model has its row, with the union accuracy
    its trial recorded."""
    from orchestrator.runfolder import collect_status

    res = subprocess.run(["mpo", "report", str(run_dir)], env={**slurm.env, **env},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    md = (run_dir / "report" / "report.md").read_text()
    trials = collect_status(run_dir).trials
    assert {t.label for t in trials} == {"Nat", "Adv_inf", "Adv_1", "Adv_avg", "Adv_max"}
    for t in trials:
        union = t.summary["groups"]["toy"]["union"]
        row = re.search(rf"^\| {re.escape(t.label)} \| 1000 \|.*$", md, flags=re.M)
        assert row, f"no row for {t.label} in report.md"
        assert f"| {100 * union:.1f} [" in row.group(0), (row.group(0), union)


def _done_trials(run_dir: Path) -> int:
    """Trials of the run folder that are done (0 before the folder is complete)."""
    from jobs.errors import MpoError
    from orchestrator.runfolder import collect_status

    if not (run_dir / "manifest.json").exists():
        return 0
    try:
        return sum(t.state == "done" for t in collect_status(run_dir).trials)
    except (MpoError, OSError, ValueError):  # a file being written
        return 0


def _cancel_after_a_trial(slurm: SlurmCluster, env: dict[str, str], job_id: str,
                          run_dir: Path) -> tuple[Job, str, int]:
    """Wait until the job has finished one trial, cancel it (what a time limit does), wait for
    its end; (the job, its failure message, the trials done)."""
    deadline = time.monotonic() + SWEEP_TIMEOUT
    while _done_trials(run_dir) == 0 and time.monotonic() < deadline:
        assert slurm.job_fields(job_id).get("JobState") in ("PENDING", "RUNNING"), \
            _finish(slurm, env, job_id, [])[1]
        time.sleep(2)
    slurm.cancel(job_id)
    job, context = _finish(slurm, env, job_id, ["toy", "--name", "toy", "(cancelled)"])
    return job, context, _done_trials(run_dir)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(2 * SWEEP_TIMEOUT + 600)
def test_toy_sweep_on_two_nodes_cancelled_and_resumed(slurm, job_env):
    started = time.monotonic()
    storage = Path(job_env["MPO_STORAGE"])
    run_dir = storage / "toy"
    job_id = _start(slurm, job_env, ["toy", "--name", "toy"])
    first, context, done = _cancel_after_a_trial(slurm, job_env, job_id, run_dir)
    first_s = time.monotonic() - started
    assert first.state == "CANCELLED", context
    assert ": 2 of 2 Ray node(s) up: 2 CPU, 0 GPU" in first.output, context
    # the script stops at once; mpo's own resume line may come too late for Slurm's SIGKILL
    # when the Ray steps, signalled at the same moment, block its driver
    assert ": signalled; stopping" in first.output, context
    assert f": to continue: sbatch {SCRIPT} --resume {run_dir}\n" in first.output, context
    assert 1 <= done < 5, context
    jobdir = storage / ".slurm" / first.job_id
    assert "Ray runtime started" in (jobdir / "ray-head.log").read_text()
    workers = list(jobdir.glob("ray-worker-*.log"))
    assert len(workers) == 1 and "Ray runtime started" in workers[0].read_text(), context
    assert not (jobdir / "ray_auth_token").exists(), "the job left its Ray token behind"
    assert not _leftovers(job_env), "Ray or mpo outlived its job"

    # the same script resumes the run: the finished trials are kept, the others run
    again, context = _submit(slurm, job_env, ["--resume", str(run_dir)], timeout=SWEEP_TIMEOUT)
    assert again.returncode == 0, context
    assert f"{done} of 5 trials finished, {5 - done} to run" in again.output, context
    assert "mpo sweep exited with status 0" in again.output, context
    assert ": Ray stopped" in again.output, context
    assert not _leftovers(job_env), "Ray or mpo outlived its job"
    _check_run_folder(run_dir)
    _check_report(run_dir, job_env, slurm)
    print(f"slurm test wall time: {time.monotonic() - started:.0f} s (first job: {first_s:.0f} s "
          f"from submission to its end, cancelled after {done} trial(s); resume job "
          f"{again.wall_seconds:.0f} s)")


@pytest.mark.slurm
@pytest.mark.parametrize(("args", "error"), [
    ([], "no arguments: give what `mpo sweep` takes, e.g. 'sbatch mpo-sweep.sbatch toy'"),
    (["toy", "--address", "auto"], "--address is set by this script (the allocation's Ray head)"),
    (["--resume", "/nonexistent/toy"], "--resume /nonexistent/toy: no such run folder"),
])
def test_bad_arguments_end_the_job_with_one_error_line(slurm, job_env, args, error):
    job, context = _submit(slurm, job_env, args, timeout=120)
    assert job.returncode == 2, context
    assert job.output.startswith(f"mpo-slurm: Error: {error}"), context
    assert "Ray head mpo1 at" not in job.output, context  # refused before anything started


@pytest.mark.slurm
def test_a_taken_port_is_refused_before_ray_starts(slurm, job_env):
    import socket

    port = free_port(5)
    with socket.socket() as busy:  # the head's port, taken by someone else
        busy.bind(("", port))
        busy.listen()
        job, context = _submit(slurm, {**job_env, "MPO_RAY_PORT": str(port)}, ["toy"])
    assert job.returncode == 2, context
    assert (f"mpo-slurm: Error: port(s) {port} in use on mpo1; set MPO_RAY_PORT to the first "
            "of 5 free ports") in job.output, context
    assert "Ray head mpo1 at" not in job.output, context


@pytest.mark.slurm
def test_a_head_that_does_not_start_ends_the_job_with_its_log(slurm, job_env, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    env = {**job_env, "MPO_RAY_TMPDIR": str(not_a_folder)}  # Ray cannot make its folder
    job, context = _submit(slurm, env, ["toy", "--name", "never"])
    assert job.returncode == 2, context
    assert "mpo-slurm: Error: the Ray head did not start on mpo1" in job.output, context
    assert "Ray head is up" not in job.output and "Ray stopped" in job.output, context
    assert not (Path(env["MPO_STORAGE"]) / "never").exists()


@pytest.mark.slurm
def test_storage_a_node_does_not_share_is_refused(slurm, job_env, tmp_path):
    """A second cluster whose node mpo2 has its own empty folder where the storage is."""
    storage = tmp_path / "runs"
    storage.mkdir()
    if not can_hide_folders(tmp_path / "probe"):
        pytest.skip("no mount namespaces here (unshare --mount): cannot make node-local storage")
    local = SlurmCluster(tmp_path / "slurm", private={"mpo2": storage})
    try:
        local.start()
        job, context = _submit(local, {**job_env, "MPO_STORAGE": str(storage)}, ["toy"])
    finally:
        local.stop()
    assert job.returncode == 2, context
    assert (f"mpo-slurm: Error: the storage folder {storage} is not shared: node(s) mpo2 "
            f"cannot see {storage}/.slurm/{job.job_id}/shared-check") in job.output, context
    assert "Ray head mpo1 at" not in job.output, context


def test_slurm_script_prints_and_writes_the_shipped_script(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["slurm-script"])
    assert res.exit_code == 0 and res.output == SCRIPT.read_text() == script_text()
    assert "#SBATCH --ntasks-per-node=1" in res.output
    out = tmp_path / "sweep.sbatch"
    res = runner.invoke(main, ["slurm-script", "--out", str(out)])
    assert res.exit_code == 0 and out.read_text() == script_text()
    assert os.access(out, os.X_OK)
    res = runner.invoke(main, ["slurm-script", "--out", str(out)])
    assert res.exit_code == 1 and "Error: --out" in res.output and "--force" in res.output
    assert runner.invoke(main, ["slurm-script", "--out", str(out), "--force"]).exit_code == 0


def test_the_script_outside_slurm_says_how_to_submit_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    bash = shutil.which("bash") or "/bin/bash"
    res = subprocess.run([bash, str(SCRIPT), "toy"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip() == ("mpo-slurm: Error: not inside a Slurm job: submit this file "
                                  "with sbatch")
    assert not list(tmp_path.iterdir())  # nothing made
