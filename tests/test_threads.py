"""Torch's thread counts are set from the CPUs a process was given: whole CPUs of a bundle (a
fractional share runs one thread) in sweep trials and tasks, and ``--threads`` (default: this
process's CPU affinity) in ``mpo train`` and ``mpo eval``. The sweep side is checked where it
runs (tests/test_sweep.py, tests/test_multinode.py: trial.json ``placements`` and the shards'
side records)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.resources import available_cpus, set_torch_threads, torch_threads


@pytest.mark.parametrize(("cpus", "threads"),
                         [(0.25, 1), (0.5, 1), (1.0, 1), (1.5, 1), (2.0, 2), (4.0, 4)])
def test_threads_are_the_whole_cpus_reserved(cpus, threads):
    assert torch_threads(cpus) == threads


def test_available_cpus_is_the_affinity_mask():
    assert available_cpus() == len(os.sched_getaffinity(0))


@pytest.fixture
def torch_threads_restored():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_set_torch_threads_sets_and_reports(torch_threads_restored):
    import torch

    assert set_torch_threads(1)["intra_op"] == 1 == torch.get_num_threads()
    # inter-op threads can be set once per process: a second call keeps the first value
    # without failing
    assert set_torch_threads(2)["inter_op"] == torch.get_num_interop_threads()


def first_epoch(out) -> dict:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`mpo train toy --threads 1` (the threads torch had before are restored after)."""
    import torch

    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("threads") / "t"
    result = CliRunner().invoke(main, ["train", "toy", "--out", str(out), "--device", "cpu",
                                       "--threads", "1"])
    torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    return out


def test_mpo_train_runs_the_threads_asked_for(trained):
    assert first_epoch(trained)["device"] == "cpu (1 threads)"


def test_mpo_eval_runs_the_threads_asked_for(trained, tmp_path, torch_threads_restored):
    import torch

    torch.set_num_threads(2)
    result = CliRunner().invoke(main, ["eval", str(trained), "--suite", "toy", "--n-test", "10",
                                       "--out", str(tmp_path / "e"), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 1


def test_mpo_train_defaults_to_the_cpus_it_may_use(tmp_path):
    """Pinned to one CPU (as taskset or a container would), `mpo train` runs one thread, not
    one per core of the machine."""
    cpu = min(os.sched_getaffinity(0))
    subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", "toy", "--out",
                    str(tmp_path / "t"), "--device", "cpu"], check=True, capture_output=True,
                   preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert first_epoch(tmp_path / "t")["device"] == "cpu (1 threads)"


def test_threads_below_one_are_refused(tmp_path):
    result = CliRunner().invoke(main, ["train", "toy", "--out", str(tmp_path), "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output
