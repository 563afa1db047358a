"""One driver per run folder (``orchestrator.runlock``): a second driver is refused naming the
first, a lock left by a dead driver is taken over with a notice, and a filesystem that ignores
flock does not let two drivers in. No Ray: the refusal comes before a driver connects. And the
signals that end a driver (``orchestrator.tune_driver.interruptible``)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import runlock
from orchestrator.cli import main

HOLD = """
import sys, time
from pathlib import Path
from orchestrator import runlock
lock = runlock.acquire(Path(sys.argv[1]), command="mpo sweep held-by-test")
print("held", flush=True)
time.sleep(600)
"""


def hold_in_subprocess(folder: Path) -> subprocess.Popen:
    """A process of this host that holds ``folder``'s lock until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def holder(tmp_path):
    proc = hold_in_subprocess(tmp_path)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A new run folder of a test grid, as `mpo sweep` makes it before it starts the trials."""
    from orchestrator.plan import load_plan
    from orchestrator.resources import Resources
    from orchestrator.runfolder import prepare_run, settings_for
    from tests.test_sweep import write_grid

    plan, text, _ = load_plan(write_grid(tmp_path / "grid"))
    settings = settings_for(Resources(0.0), max_failures=0, shard_retries=0, data_dir=None,
                            download=False)
    return prepare_run(plan, text, tmp_path / "run", settings=settings).path


def test_a_second_driver_is_refused_naming_the_holder(holder, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(runlock.RunFolderError,
                       match=rf"in use by another `mpo sweep`: pid {holder.pid} on host "
                             rf"{platform.node()} since .* \(mpo sweep held-by-test\)"):
        runlock.acquire(tmp_path, command="mpo sweep second")
    assert time.monotonic() - t0 < runlock.RETRY_SECONDS + 1.5
    assert runlock.is_held(tmp_path)
    assert runlock.read_holder(tmp_path)["pid"] == holder.pid


def test_the_lock_of_a_killed_driver_is_taken_over(tmp_path):
    proc = hold_in_subprocess(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / runlock.LOCK_FILE).exists()  # a SIGKILLed driver cleans nothing up
    assert not runlock.is_held(tmp_path)
    with runlock.acquire(tmp_path, command="mpo sweep --resume") as lock:
        assert lock.previous["pid"] == proc.pid and lock.previous["host"] == platform.node()
        assert runlock.read_holder(tmp_path)["pid"] == os.getpid()
        assert runlock.is_held(tmp_path)
    assert not (tmp_path / runlock.LOCK_FILE).exists()  # released: the file goes


def test_a_released_lock_leaves_no_trace(tmp_path):
    with runlock.acquire(tmp_path, command="a") as lock:
        assert lock.previous == {}
    with runlock.acquire(tmp_path, command="b") as lock:
        assert lock.previous == {}  # nothing to take over: the first driver ended cleanly


def test_a_filesystem_that_ignores_flock_does_not_let_two_drivers_in(holder, tmp_path):
    """A record naming a live process of this host is honoured even when flock is granted."""
    record = runlock.read_holder(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / runlock.LOCK_FILE).write_text(json.dumps(record))  # a lock nobody flocks
    with pytest.raises(runlock.RunFolderError, match="does not enforce flock"):
        runlock.acquire(other, command="second")


def test_a_dead_pid_recorded_with_another_start_is_not_a_holder(tmp_path):
    """A pid reused by an unrelated process (its start time differs) is not the holder."""
    record = {**runlock.holder_record("old"), "pid": os.getppid(), "proc_start": "1"}
    (tmp_path / runlock.LOCK_FILE).write_text(json.dumps(record))
    with runlock.acquire(tmp_path, command="new") as lock:
        assert lock.previous["command"] == "old"


def test_mpo_sweep_resume_is_refused_while_a_driver_holds_the_run(run_folder):
    proc = hold_in_subprocess(run_folder)
    try:
        result = CliRunner().invoke(main, ["sweep", "--resume", str(run_folder)])
    finally:
        proc.kill()
        proc.wait()
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert f"pid {proc.pid} on host {platform.node()}" in lines[0]
    assert f"mpo sweep --resume {run_folder}" in lines[0]
    assert "Traceback" not in result.output


@pytest.fixture
def signal_handlers_restored():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_a_signal_ends_the_run_block_once(signal_handlers_restored):
    from orchestrator.tune_driver import SweepInterrupted, interruptible

    with pytest.raises(SweepInterrupted) as info, interruptible():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert info.value.signum == signal.SIGTERM and str(info.value) == "SIGTERM"
    # on its way out, the driver ignores further signals (shutting Ray down is not interrupted)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_a_bare_keyboard_interrupt_is_reported_as_the_signal_that_came(signal_handlers_restored):
    """Ray turns the handler's exception inside its waits into a bare KeyboardInterrupt."""
    from orchestrator.tune_driver import SweepInterrupted, interruptible

    with pytest.raises(SweepInterrupted) as info, interruptible():
        with contextlib.suppress(SweepInterrupted):
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        raise KeyboardInterrupt
    assert info.value.signum == signal.SIGINT


def test_without_a_signal_the_handlers_come_back(signal_handlers_restored):
    from orchestrator.tune_driver import interruptible

    before = signal.getsignal(signal.SIGINT)
    with interruptible():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
