"""`mpo sweep` on a real multi-node Ray cluster (``tests.ray_nodes``: a head and three worker
nodes started with ``ray.cluster_utils.Cluster`` in a process of their own, each node with
2 CPUs, one fake GPU and a custom resource named after it).

With the cluster's GPUs the sweep's defaults apply as on a real GPU cluster: a trial reserves
{CPU 1, GPU 1} to train and {CPU 1, GPU 0.5} for its evaluation tasks, which on nodes of one
GPU puts the two bundles on different nodes. Torch here has no CUDA: trials and tasks fall back
to the CPU, so the orchestrator's GPU code path runs without a GPU.

One sweep of three toy models, during which a worker node is removed while a trial trains on
it and another while evaluation tasks run on it (each replaced by a fresh node, as an
autoscaler would). The sweep must finish with every row once, the same per-input outcomes as
an undisturbed run of the same models in one plain process, and no epoch trained twice.

These tests run with their own Ray instance (``RAY_TMPDIR`` of their own), not the session
cluster of the other sweep tests, and are marked ``multinode``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_sweep import THREE, read_rows, write_grid

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

EPOCHS = 4
#: Fast detection of a lost node (Ray's default takes about 15 s).
HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
          "health_check_timeout_ms": 500, "health_check_initial_delay_ms": 0}
SPEC = {"head": {"num_cpus": 0}, "worker": {"num_cpus": 2, "num_gpus": 1},
        "workers": ["node-a", "node-b", "node-c"], "system_config": HEALTH}
#: Training sleeps after each epoch and each evaluation task before it evaluates, so that the
#: test can remove a node while a trial trains and while a task runs.
FAULTS = {"train_sleep": 1.5, "eval_sleep": 2.0}


class Nodes:
    """The cluster process of ``tests.ray_nodes``: its address, node ids by name, and commands."""

    def __init__(self, tmp: Path) -> None:
        # A short private temp dir: Ray's socket paths must stay under 108 characters.
        self.tmpdir = Path(f"/tmp/mpo-mn-{os.getpid()}")
        self.env = {**os.environ, "RAY_TMPDIR": str(self.tmpdir), "RAY_AUTH_MODE": "disabled"}
        self.env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ray_nodes", json.dumps(SPEC)], env=self.env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(tmp / "nodes.log").open("w"),
            text=True, cwd=Path(__file__).resolve().parents[1],
        )
        first = self._answer()
        self.address: str = first["address"]
        self.ids: dict[str, str] = first["nodes"]

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the cluster process ended (see nodes.log)"
        return json.loads(line)

    def _command(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def name_of(self, node_id: str) -> str:
        return next(name for name, nid in self.ids.items() if nid == node_id)

    def remove(self, name: str) -> None:
        assert self._command(f"remove {name}") == {"removed": name}

    def add(self, name: str) -> None:
        self.ids[name] = self._command(f"add {name}")["node_id"]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # end of stdin: the cluster shuts down
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def trials(run_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in run_dir.glob("trials/*/trial.json"):
        try:
            out[path.parent.name] = json.loads(path.read_text())
        except (OSError, ValueError):  # being replaced right now
            continue
    return out


def shard_runs(run_dir: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out = {}
    for path in run_dir.glob("trials/*/shards/*.json"):
        try:
            out[(path.parent.parent.name, path.stem)] = json.loads(path.read_text())["runs"]
        except (OSError, ValueError, KeyError):
            continue
    return out


def wait_for(what: str, condition, proc: subprocess.Popen, timeout: float = 120.0):
    """Poll ``condition()`` until it returns something true; fail if the sweep ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (exit {proc.returncode}) before {what}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def training_node(run_dir: Path, nodes: Nodes):
    """A trial with some epochs done and some to go, and the worker node it trains on."""
    for mid, rec in trials(run_dir).items():
        epochs = len((run_dir / "trials" / mid / "metrics.jsonl").read_text().splitlines()) \
            if (run_dir / "trials" / mid / "metrics.jsonl").exists() else 0
        if rec.get("state") == "training" and 1 <= epochs <= EPOCHS - 2 and rec.get("placements"):
            return mid, nodes.name_of(rec["placements"][-1]["node_id"]), epochs
    return None


def evaluating_node(run_dir: Path, nodes: Nodes, avoid: set[str]):
    """A running evaluation task on a node other than its trial's (and not in ``avoid``)."""
    recs = trials(run_dir)
    for (mid, shard), runs in shard_runs(run_dir).items():
        last = runs[-1]
        trial_node = recs.get(mid, {}).get("placements", [{}])[-1].get("node_id")
        if "finished" in last or last["node_id"] == trial_node or last["node_id"] not in nodes.ids.values():
            continue
        name = nodes.name_of(last["node_id"])
        if name not in avoid:
            return mid, shard, name
    return None


def baseline_rows(run_dir: Path, tmp: Path):
    """The same models trained and evaluated in this process, one thread, no Ray: what an
    undisturbed run gives."""
    import pandas as pd
    import torch

    from jobs.evaluation import evaluate
    from jobs.suite import load_suite
    from jobs.training import train

    manifest = json.loads((run_dir / "manifest.json").read_text())
    suite = load_suite(str(run_dir / "suites" / "suite.yaml"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        paths = []
        for mid, trial in manifest["trials"].items():
            result = train(trial["config"], tmp / "baseline" / mid, device="cpu")
            paths += evaluate(result.checkpoint, suite, n_test=40, shard_size=20,
                              out_dir=tmp / "baseline", device="cpu", model_label=trial["label"],
                              groups=list(trial["groups"]))
    finally:
        torch.set_num_threads(threads)
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


@pytest.fixture(scope="module")
def lost_nodes_run(tmp_path_factory):
    """The sweep, with a node removed mid-training and another mid-evaluation; returns
    (run dir, driver output, what was removed, the node ids by name, seconds)."""
    tmp = tmp_path_factory.mktemp("multinode")
    grid = write_grid(tmp / "grid", epochs=EPOCHS, models=THREE)
    nodes = Nodes(tmp)
    run_dir = tmp / "runs" / "mn"
    log = (tmp / "driver.log").open("w")
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "sweep", str(grid), "--address", nodes.address,
         "--storage", str(tmp / "runs"), "--name", "mn", "--max-failures", "3"],
        env={**nodes.env, "MPO_TEST_FAULTS": json.dumps(FAULTS)}, stdout=log,
        stderr=subprocess.STDOUT,
    )
    removed: dict[str, Any] = {}
    try:
        mid, name, epochs = wait_for("a trial training on a worker node",
                                     lambda: training_node(run_dir, nodes), proc)
        nodes.remove(name)
        removed["training"] = {"model_id": mid, "node": name, "epochs_done": epochs}
        nodes.add("node-d")
        mid, shard, name = wait_for(
            "an evaluation task on another node than its trial's",
            lambda: evaluating_node(run_dir, nodes, avoid={removed["training"]["node"]}), proc,
            timeout=180)
        nodes.remove(name)
        removed["evaluation"] = {"model_id": mid, "shard": shard, "node": name,
                                 "attempts": trials(run_dir)[mid]["attempts"]}
        nodes.add("node-e")
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        seconds = time.time() - t0
        ids = dict(nodes.ids)
        nodes.close()
        log.close()
    output = (tmp / "driver.log").read_text()
    assert proc.returncode == 0, output[-4000:]
    return run_dir, output, removed, ids, seconds


def test_every_row_once_and_as_an_undisturbed_run(lost_nodes_run, tmp_path):
    run_dir, _, removed, _, seconds = lost_nodes_run
    rows, files = read_rows(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    expected = 3 * 2 * 40
    duplicated = int(rows.duplicated(["model_id", "attack", "index"]).sum())
    retrained = sum(rec["epoch_runs"] - EPOCHS for rec in trials(run_dir).values())
    print(f"\nmultinode: nodes lost {removed}; rows expected {expected}, found {len(rows)}, "
          f"duplicated {duplicated}; epochs trained twice {retrained}; sweep {seconds:.0f} s")
    assert len(files) == len(manifest["shards"]) == 12
    assert len(rows) == expected and duplicated == 0
    base = baseline_rows(run_dir, tmp_path)
    key = ["model_id", "attack", "index"]
    both = rows.merge(base, on=key, suffixes=("", "_base"), validate="one_to_one")
    assert len(both) == expected
    for col in ("robust", "fooled", "clean_pred", "adv_pred", "perturbation", "loss"):
        assert (both[col] == both[f"{col}_base"]).all(), col


def test_trials_ran_on_several_nodes_and_reserved_gpus(lost_nodes_run):
    run_dir, _, _, ids, _ = lost_nodes_run
    names = {nid: name for name, nid in ids.items()}
    recs = trials(run_dir)
    first_nodes = {names[r["placements"][0]["node_id"]] for r in recs.values()}
    assert len(first_nodes) >= 2, first_nodes
    for rec in recs.values():
        assert rec["state"] == "done"
        for p in rec["placements"]:
            # the default on a GPU cluster: one GPU per trial; torch has no CUDA here
            assert p["resources"] == {"CPU": 1.0, "GPU": 1.0} and len(p["gpu_ids"]) == 1
            assert p["device"] == "cpu" and p["threads"]["intra_op"] == 1
    for runs in shard_runs(run_dir).values():
        done = [r for r in runs if "finished" in r]
        assert len(done) >= 1
        assert all(r["resources"] == {"CPU": 1.0, "GPU": 0.5} and r["device"] == "cpu"
                   for r in runs)
        # a trial's evaluation bundle and its training bundle need 1.5 GPUs: two nodes
    trial_nodes = {r["placements"][-1]["node_id"] for r in recs.values()}
    task_nodes = {r["node_id"] for runs in shard_runs(run_dir).values() for r in runs}
    assert task_nodes - trial_nodes


def test_a_trial_whose_node_was_lost_restarted_elsewhere_from_its_epoch(lost_nodes_run):
    run_dir, output, removed, ids, _ = lost_nodes_run
    lost = removed["training"]
    rec = trials(run_dir)[lost["model_id"]]
    # the driver says so in one line (Tune's traceback stays in the trial's error.txt)
    assert f"{rec['label']}: trial failed (ActorDiedError" in output
    assert "Traceback" not in output
    nodes = [p["node_id"] for p in rec["placements"]]
    assert nodes[0] == ids[lost["node"]] and ids[lost["node"]] not in nodes[1:]
    assert rec["attempts"] >= 2
    assert rec["resumed_from_epochs"] and rec["resumed_from_epochs"][0] >= lost["epochs_done"]
    assert rec["epoch_runs"] == EPOCHS  # no finished epoch was trained again
    metrics = (run_dir / "trials" / lost["model_id"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == list(range(1, EPOCHS + 1))


def test_evaluation_tasks_lost_with_their_node_were_retried(lost_nodes_run):
    run_dir, _, removed, ids, _ = lost_nodes_run
    lost = removed["evaluation"]
    runs = shard_runs(run_dir)[(lost["model_id"], lost["shard"])]
    gone = ids[lost["node"]]
    assert runs[0]["node_id"] == gone and "finished" not in runs[0]  # the run lost with its node
    assert runs[-1]["node_id"] != gone and runs[-1]["computed"] is True
    rec = trials(run_dir)[lost["model_id"]]
    # Ray retried the task; the trial itself, on another node, carried on (no restart)
    assert rec["failed_shards"] == [] and rec["attempts"] == lost["attempts"]
    assert gone not in [p["node_id"] for p in rec["placements"]]
