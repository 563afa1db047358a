"""Group 5 (continued), whole sweeps as a user runs them: the quickstart's ``mpo sweep toy`` from
the shell prompt to its exit (its own local Ray cluster started and stopped), and how busy it
and a 2-trial MNIST sweep kept the CPUs (``orchestrator.utilisation``: the trials' and tasks'
busy CPU-seconds from the run folder's own records, over wall time x CPUs).

Each sweep is the ``mpo`` executable in its own process, one after the other and before the
bench starts its own cluster, so no two clusters share the machine. Not in ``--quick`` (each
sweep starts a Ray cluster of its own; the tests run one cluster for the whole session).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.bench.cli_latency import mpo_command
from orchestrator.bench.figures import Figure, Target, ratio_figure, skipped
from orchestrator.bench.workload import Settings

USE_TITLES = {
    "sweep/quickstart_wall": "the quickstart's `mpo sweep toy`, prompt to exit (s)",
    "sweep/toy_utilisation": "toy sweep: busy CPU-s / (wall x CPUs)",
    "sweep/mnist_utilisation": "2-trial MNIST sweep: busy CPU-s / (wall x CPUs)",
}
TARGETS = {"sweep/quickstart_wall": Target("<=", 30.0),
           "sweep/mnist_utilisation": Target(">=", 0.85)}

#: The 2-trial MNIST sweep: two quarter-width CNNs (Adv_inf and Adv_2, 10-step attacks: about
#: the same work each), 4 epochs of 12000 digits, 1000 test points against PGD l_inf, PGD l_2
#: and SLIDE (20 steps): a few minutes on 2 cores.
MNIST_SUITE = """\
name: bench-mnist
dataset: mnist
seed: 0
n_test: 1000
description: mpo bench's 2-trial MNIST sweep (PGD l_inf, PGD l_2, SLIDE; 20 steps)
groups:
  lp: {families: [linf, l2, l1], affine: []}
attacks:
  - {name: linf-pgd, kind: first-order, spec: {type: linf, epsilon: 0.3, k: 20}}
  - {name: l2-pgd, kind: first-order, spec: {type: l2, epsilon: 2.0, k: 20}}
  - {name: l1-slide, kind: first-order, spec: {type: l1, epsilon: 10.0, k: 20, perc: 99}}
"""
MNIST_GRID = """\
name: bench-mnist
description: mpo bench's 2-trial MNIST sweep
seeds: [0]
evaluation:
  mnist: {{suite: {suite}, n_test: 1000, shard_size: 100}}
experiments:
  mnist-lp:
    families: [linf, l2, l1]
    affine: []
    train:
      dataset: {{name: mnist, n_train: 12000}}
      model: {{name: mnist_cnn_small}}
      epochs: 4
      batch_size: 50
    attacks:
      linf: {{type: linf, epsilon: 0.3, k: 10}}
      l2: {{type: l2, epsilon: 2.0, k: 10}}
    models:
      Adv_inf: {{strategy: single, attacks: [linf]}}
      Adv_2: {{strategy: single, attacks: [l2]}}
"""


def _sweep(argv: list[str], run_dir: Path) -> tuple[float, dict[str, Any]]:
    """Run one ``mpo sweep``; (wall seconds, its run.json's last driver run)."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[-6:])} exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout)[-1500:]}")
    sweeps = json.loads((run_dir / "run.json").read_text()).get("sweeps") or [{}]
    return wall, sweeps[-1]


def _use_figure(key: str, runs: list[dict[str, Any]], details: dict[str, Any]) -> Figure:
    uses = [r["utilisation"] for r in runs]
    return ratio_figure(key, "sweep", USE_TITLES[key], [u["fraction"] for u in uses],
                        target=TARGETS.get(key), unit="",
                        times={"wall": [u["wall_seconds"] for u in uses]},
                        details={**details, "utilisation": uses})


def sweep_use_figures(s: Settings, data_dir: str | None, mnist_ok: bool) -> list[Figure]:
    """The quickstart's wall time and the two utilisation figures (``s.sweep_reps`` runs each)."""
    if s.quick:
        why = "not in --quick (each sweep starts a Ray cluster of its own)"
        return [skipped(k, "sweep", t, why, TARGETS.get(k)) for k, t in USE_TITLES.items()]
    mpo = mpo_command()
    out: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="mpo-bench-use-") as tmp:
        root = Path(tmp)
        walls, toy = [], []
        for r in range(s.sweep_reps):
            name = f"toy-{r}"
            wall, entry = _sweep([*mpo, "sweep", "toy", "--storage", str(root), "--name", name],
                                 root / name)
            walls.append(wall)
            toy.append(entry)
        key = "sweep/quickstart_wall"
        out.append(ratio_figure(key, "sweep", USE_TITLES[key], walls, target=TARGETS[key],
                                unit="s", times={"mpo sweep toy": walls},
                                details={"command": "mpo sweep toy --name toy",
                                         "driver_wall_seconds": [e["wall_seconds"] for e in toy]}))
        out.append(_use_figure("sweep/toy_utilisation", toy, {"grid": "toy (5 trials)"}))
        key = "sweep/mnist_utilisation"
        if not mnist_ok:
            out.append(skipped(key, "sweep", USE_TITLES[key],
                               "MNIST not found (give --data-dir)", TARGETS[key]))
            return out
        suite = root / "bench-mnist-suite.yaml"
        suite.write_text(MNIST_SUITE)
        grid = root / "bench-mnist.yaml"
        grid.write_text(MNIST_GRID.format(suite=suite))
        mnist = []
        for r in range(s.sweep_reps):
            name = f"mnist-{r}"
            argv = [*mpo, "sweep", str(grid), "--storage", str(root), "--name", name]
            if data_dir:
                argv += ["--data-dir", data_dir]
            mnist.append(_sweep(argv, root / name)[1])
        out.append(_use_figure(key, mnist, {"grid": "2 trials: mnist_cnn_small Adv_inf and Adv_2, "
                                            "4 epochs of 12000, 1000 points x 3 attacks"}))
    return out
