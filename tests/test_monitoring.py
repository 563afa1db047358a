"""Watching a sweep: names on the Ray dashboard, and mpo's metrics in a real Prometheus server.

One test-sized toy sweep, run by the CLI (``mpo sweep GRID --address ...``) on a Ray cluster of
its own (``tests.ray_nodes`` in a subprocess with its own ``RAY_TMPDIR``, apart from the shared
test cluster: a head with the dashboard, a metrics export port, and metrics reported every
second), while a real Prometheus server (Debian's ``prometheus``) scrapes it with the shipped
``orchestrator/monitoring/prometheus.yml``, pointed at this cluster's service-discovery file.
Then: the dashboard's state API shows the job, the trial actors and the evaluation tasks by
what they hold (``orchestrator.naming``), and Prometheus's HTTP API has mpo's metrics
(``orchestrator.metrics``) with their tags and the values the run folder records.

Without the ``prometheus`` binary the Prometheus tests skip, or fail when
``MPO_REQUIRE_SERVERS=1`` (CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from orchestrator.metrics import METRICS, exported_name
from orchestrator.naming import job_metadata, shard_task_name, trial_repr
from tests.test_sweep import THREE, write_grid

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "orchestrator" / "monitoring"
EPOCHS = 3
SWEEP = "watched"
ATTACKS = {"linf-pgd": 0.4020151261036849, "l1-slide": 2.0}  # tests.test_sweep's suite
N_TEST, SHARD = 40, 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_binary() -> str:
    """The prometheus server's path; skips without one (fails when MPO_REQUIRE_SERVERS=1)."""
    found = shutil.which("prometheus")
    if found is None:
        message = "prometheus is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("MPO_REQUIRE_SERVERS") == "1":
            pytest.fail(f"MPO_REQUIRE_SERVERS=1 and {message}")
        pytest.skip(message)
    return found


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def wait_until(what: str, check, timeout: float) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            found = check()
        except OSError:  # not listening yet
            found = None
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


class Cluster:
    """A one-node Ray cluster with the dashboard and a metrics export port, in a process of its
    own (``tests.ray_nodes``); ``close`` shuts it down."""

    def __init__(self, log: Path) -> None:
        self.tmpdir = Path(f"/tmp/mpo-mon-{os.getpid()}")  # short: Ray's socket paths
        self.dashboard_port, self.metrics_port = free_port(), free_port()
        spec = {"head": {"num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1",
                         "dashboard_port": self.dashboard_port,
                         "metrics_export_port": self.metrics_port},
                # every second, not every 10 s: a test-sized trial lives a few seconds
                "system_config": {"metrics_report_interval_ms": 1000}}
        self.env = {**os.environ, "RAY_TMPDIR": str(self.tmpdir), "RAY_AUTH_MODE": "disabled"}
        self.env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ray_nodes", json.dumps(spec)], env=self.env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
            cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the cluster process ended (see {log})"
        self.address: str = json.loads(line)["address"]
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # end of stdin: the cluster shuts down
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


class Prometheus:
    """Debian's prometheus with the shipped config, its service-discovery path moved to this
    cluster's temp dir and its scrape interval shortened to one second."""

    def __init__(self, binary: str, ray_tmpdir: Path, folder: Path) -> None:
        text = (MONITORING / "prometheus.yml").read_text()
        assert "/tmp/ray/prom_metrics_service_discovery.json" in text
        text = text.replace("/tmp/ray/", f"{ray_tmpdir}/ray/")
        text = re.sub(r"(scrape_interval|evaluation_interval|refresh_interval): \d+s", r"\1: 1s",
                      text)
        config = folder / "prometheus.yml"
        config.write_text(text)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=(folder / "prometheus.log").open("w"),
            start_new_session=True)
        wait_until("prometheus to be ready", lambda: self._ready(), 60)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited (see prometheus.log)"
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
            return response.status == 200

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector: [{"metric": {labels}, "value": [t, "v"]}]."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        answer = get_json(url)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """The sweep on its own cluster, scraped by Prometheus when it is installed; yields
    {"run_dir", "cluster", "prometheus" (None without the binary), "seconds"}. Prometheus and
    the cluster stay up for the tests and are shut down at the end."""
    tmp = tmp_path_factory.mktemp("monitoring")
    grid = write_grid(tmp / "grid", epochs=EPOCHS, models=THREE)
    t0 = time.time()
    cluster = Cluster(tmp / "cluster.log")
    prometheus = None
    try:
        if shutil.which("prometheus") or os.environ.get("MPO_REQUIRE_SERVERS") == "1":
            prometheus = Prometheus(prometheus_binary(), cluster.tmpdir, tmp)
            target = f":{cluster.metrics_port}"
            wait_until("prometheus to scrape the cluster's metrics agent", lambda: any(
                t["health"] == "up" and t["scrapeUrl"].split("/metrics")[0].endswith(target)
                for t in get_json(f"{prometheus.url}/api/v1/targets")["data"]["activeTargets"]),
                60)
        started = time.time()
        driver = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "sweep", str(grid), "--address",
             cluster.address, "--storage", str(tmp / "runs"), "--name", SWEEP,
             "--cpus-per-trial", "0.5", "--eval-workers", "1", "--cpus-per-eval-worker", "0.5"],
            env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=420)
        assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
        if prometheus is not None:
            time.sleep(3)  # the last reports (every second) and scrapes (every second)
        yield {"run_dir": tmp / "runs" / SWEEP, "cluster": cluster, "prometheus": prometheus,
               "seconds": {"setup": started - t0, "sweep": time.time() - started}}
    finally:
        if prometheus is not None:
            prometheus.close()
        cluster.close()


def trials_of(run_dir: Path) -> dict[str, dict[str, Any]]:
    """{model_id: trial.json} of the finished run."""
    return {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("trials/*/trial.json")}


# ----------------------------------------------------------------------------------------------
# Names (no Ray, no server)


def test_names_say_what_each_thing_holds():
    assert trial_repr("Adv_max", "toy-max-linf_l1-b1ab8125") == "Adv_max · toy-max-linf_l1-b1ab8125"
    assert shard_task_name("Adv_max", "linf-pgd@0.5", 0, 100, 0.20100756) == \
        "Adv_max · linf-pgd@0.5 (ε 0.201) · inputs 0-99"
    assert shard_task_name("Nat", "rt-grid", 100, 200) == "Nat · rt-grid · inputs 100-199"
    meta = job_metadata("toy", Path("/runs/toy-1"), trials=5, todo=5, shards=20, resume=False)
    assert meta["job_name"] == "mpo sweep toy · toy-1 · 5 trials, 20 shards"
    assert meta["mpo_run_dir"] == "/runs/toy-1" and meta["mpo_grid"] == "toy"
    resumed = job_metadata("toy", Path("/runs/toy-1"), trials=5, todo=2, shards=20, resume=True)
    assert resumed["job_name"] == "mpo resume toy · toy-1 · 2 of 5 trials"
    assert all(isinstance(v, str) for v in meta.values())  # Ray's job metadata: str -> str


def test_trial_class_takes_its_placement_group_from_the_config(ray_cluster):
    from orchestrator.trial_actor import trial_class

    MpoTrial = trial_class({})
    bundles = [{"CPU": 0.5}, {"CPU": 0.5}, {"CPU": 1.0, "GPU": 0.5}]
    pgf = MpoTrial.default_resource_request({"settings": {"bundles": bundles}})
    assert pgf.bundles == bundles
    assert MpoTrial.default_resource_request({"settings": {}}) is None
    assert MpoTrial.__qualname__ == "MpoTrial"  # the Actors page's class


def test_grafana_dashboard_plots_every_mpo_metric_by_its_exported_name():
    dashboard = json.loads((MONITORING / "grafana-mpo.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"\bray_mpo_\w+", " ".join(exprs)))
    exported = {exported_name(n) for n in METRICS}
    known = exported | {f"{exported_name(n)}_{s}" for n, d in METRICS.items()
                        if d.kind == "histogram" for s in ("bucket", "sum", "count")}
    assert used <= known, used - known
    assert {n for n in exported if n in used or any(u.startswith(n + "_") for u in used)} == \
        exported
    assert all('sweep=~"$sweep"' in e for e in exprs)


# ----------------------------------------------------------------------------------------------
# The dashboard (the sweep's cluster, its state API)

@pytest.mark.slow
def test_dashboard_names_the_job_the_trials_and_the_tasks(watched):
    run_dir, dash = watched["run_dir"], watched["cluster"].dashboard
    trials = trials_of(run_dir)
    assert len(trials) == 3 and all(t["state"] == "done" for t in trials.values())

    jobs = [j for j in get_json(f"{dash}/api/jobs/") if (j.get("metadata") or {}).get("mpo_sweep")]
    assert [j["metadata"]["job_name"] for j in jobs] == \
        [f"mpo sweep toy-test · {SWEEP} · 3 trials, 12 shards"]
    assert jobs[0]["metadata"]["mpo_run_dir"] == str(run_dir.resolve())

    actors = get_json(f"{dash}/api/v0/actors?detail=1&limit=1000")["data"]["result"]["result"]
    trial_actors = [a for a in actors if a["class_name"] == "MpoTrial"]
    assert {a["repr_name"] for a in trial_actors} == \
        {trial_repr(t["label"], mid) for mid, t in trials.items()}

    tasks = get_json(f"{dash}/api/v0/tasks?detail=0&limit=10000")["data"]["result"]["result"]
    names = {t["name"] for t in tasks}
    expected = {shard_task_name(t["label"], attack, start, start + SHARD, eps)
                for t in trials.values() for attack, eps in ATTACKS.items()
                for start in range(0, N_TEST, SHARD)}
    assert expected <= names, expected - names
    assert not {n for n in names if n == "evaluate_shard_task" or n.startswith("run_trial")}
    # a trial's method calls carry its name too (Tune's train, save, stop)
    assert {f"{trial_repr(t['label'], mid)}.train" for mid, t in trials.items()} <= names


# ----------------------------------------------------------------------------------------------
# Prometheus


def series(prometheus: Prometheus, promql: str, *labels: str) -> dict[tuple[str, ...], float]:
    """{label values: value} of an instant query."""
    return {tuple(r["metric"].get(k, "") for k in labels): float(r["value"][1])
            for r in prometheus.query(promql)}


@pytest.fixture(scope="module")
def prom(watched) -> Prometheus:
    if watched["prometheus"] is None:
        prometheus_binary()  # skips, or fails under MPO_REQUIRE_SERVERS=1
    return watched["prometheus"]


@pytest.mark.slow
def test_prometheus_has_every_mpo_metric_with_its_tags(watched, prom):
    found = prom.query(f'count by (__name__) ({{__name__=~"ray_mpo_.+", sweep="{SWEEP}"}})')
    names = {r["metric"]["__name__"] for r in found}
    exported = {exported_name(n) for n in METRICS}
    histograms = {f"{exported_name(n)}_{s}" for n, d in METRICS.items() if d.kind == "histogram"
                  for s in ("bucket", "sum", "count")}
    assert names == (exported - {exported_name(n) for n, d in METRICS.items()
                                 if d.kind == "histogram"}) | histograms
    labels = {mid: t["label"] for mid, t in trials_of(watched["run_dir"]).items()}
    by_exported = {exported_name(n): d for n, d in METRICS.items()}
    for r in prom.query(f'{{__name__=~"ray_mpo_.+", sweep="{SWEEP}"}}'):
        m = r["metric"]
        assert labels[m["model_id"]] == m["model"], m
        d = by_exported[re.sub(r"_(bucket|sum|count)$", "", m["__name__"])
                        if m["__name__"] in histograms else m["__name__"]]
        for tag in d.tags:
            assert m.get(tag), (tag, m)
        if "attack" in d.tags:
            assert m["attack"] in ATTACKS


@pytest.mark.slow
def test_epochs_and_shards_reach_what_the_run_folder_records(watched, prom):
    trials = trials_of(watched["run_dir"])
    keys = {(mid, t["label"]) for mid, t in trials.items()}
    done = series(prom, f'max by (model_id, model) (max_over_time(ray_mpo_epochs_done'
                        f'{{sweep="{SWEEP}"}}[15m]))', "model_id", "model")
    assert done == {k: float(EPOCHS) for k in keys}
    total = series(prom, f'max by (model_id, model) (max_over_time(ray_mpo_epochs_total'
                         f'{{sweep="{SWEEP}"}}[15m]))', "model_id", "model")
    assert total == {k: float(EPOCHS) for k in keys}
    shards = series(prom, f'max by (model_id) (max_over_time(ray_mpo_shards_done'
                          f'{{sweep="{SWEEP}"}}[15m]))', "model_id")
    assert shards == {(mid,): float(t["shards"]) for mid, t in trials.items()}
    failed = series(prom, f'max by (model_id) (max_over_time(ray_mpo_shards_failed'
                          f'{{sweep="{SWEEP}"}}[15m]))', "model_id")
    assert failed == {(mid,): 0.0 for mid in trials}
    # pending: at most the trial's 4 shards (launched at once), 0 at the end. A gauge is
    # sampled once per export interval: a trial whose 4 toy shards take less than that
    # shows only its last value, so only the bounds and the end are certain.
    pending = series(prom, f'max by (model_id) (max_over_time(ray_mpo_shards_pending'
                           f'{{sweep="{SWEEP}"}}[15m]))', "model_id")
    assert set(pending) == {(mid,) for mid in trials}
    assert all(0 <= v <= 4 for v in pending.values()), pending
    last = series(prom, f'max by (model_id) (last_over_time(ray_mpo_shards_pending'
                        f'{{sweep="{SWEEP}"}}[15m]))', "model_id")
    assert last == {(mid,): 0.0 for mid in trials}


@pytest.mark.slow
def test_throughputs_count_every_example(watched, prom):
    trials = trials_of(watched["run_dir"])
    seen = series(prom, f'sum by (model_id) (max_over_time(ray_mpo_train_examples_total'
                        f'{{sweep="{SWEEP}"}}[15m]))', "model_id")
    # the toy grid trains on 400 examples per epoch (n_train), every one of EPOCHS epochs
    assert seen == {(mid,): 400.0 * EPOCHS for mid in trials}
    rate = series(prom, f'max by (model_id) (max_over_time(ray_mpo_train_examples_per_second'
                        f'{{sweep="{SWEEP}"}}[15m]))', "model_id")
    assert set(rate) == {(mid,) for mid in trials} and all(v > 0 for v in rate.values())
    evaluated = series(prom, f'sum by (model_id, attack) (max_over_time('
                             f'ray_mpo_attack_examples_total{{sweep="{SWEEP}"}}[15m]))',
                       "model_id", "attack")
    assert evaluated == {(mid, a): float(N_TEST) for mid in trials for a in ATTACKS}
    per_s = series(prom, f'max by (model_id, attack) (max_over_time('
                         f'ray_mpo_attack_examples_per_second{{sweep="{SWEEP}"}}[15m]))',
                   "model_id", "attack")
    assert set(per_s) == set(evaluated) and all(v > 0 for v in per_s.values())
    counted = series(prom, f'sum by (model_id) (max_over_time(ray_mpo_shard_seconds_count'
                           f'{{sweep="{SWEEP}"}}[15m]))', "model_id")
    assert counted == {(mid,): float(t["shards"]) for mid, t in trials.items()}


@pytest.mark.slow
def test_union_accuracy_so_far_ends_at_the_trials_union(watched, prom):
    trials = trials_of(watched["run_dir"])
    last = series(prom, f'last_over_time(ray_mpo_union_accuracy{{sweep="{SWEEP}"}}[15m])',
                  "model_id", "group")
    inputs = series(prom, f'last_over_time(ray_mpo_union_inputs{{sweep="{SWEEP}"}}[15m])',
                    "model_id", "group")
    assert set(last) == {(mid, "toy") for mid in trials}
    for mid, t in trials.items():
        assert last[(mid, "toy")] == pytest.approx(t["summary"]["groups"]["toy"]["union"],
                                                   abs=1e-12)
        assert inputs[(mid, "toy")] == float(t["summary"]["n"]) == float(N_TEST)
