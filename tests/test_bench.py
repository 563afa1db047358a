"""mpo bench: the quick run writes valid JSON with every figure present (targets not asserted:
speed is the bench's business, not the tests'), and the pieces behave on tiny inputs."""

from __future__ import annotations

import json
import math

import pytest

EXPECTED_KEYS = {
    "attack/pgd_linf", "attack/pgd_l2", "attack/slide",
    "peer/pgd_linf_vs_torchattacks", "peer/slide_vs_foolbox", "peer/rt_grid_vs_foolbox",
    "peer/rt_grid_vs_foolbox_early_stop",
    "train/nat_step", "train/single", "train/avg", "train/max",
    "sweep/tune_vs_inprocess", "sweep/per_trial_overhead", "sweep/tune_parallel_vs_inprocess",
    "sweep/eval_fanout_speedup",
    "gpu/mnist_adv_max_examples_per_s", "gpu/cifar10_wrn_adv_max_examples_per_s",
    "gpu/paper_grid_gpu_hours",
}
STATUSES = {"pass", "miss", "info", "skipped", "error"}


@pytest.mark.slow  # 80 s on the shared 2-core machine at load average 6-7
@pytest.mark.ray
@pytest.mark.peer
def test_bench_quick_cli_writes_every_figure(tmp_path, mnist_dir, ray_cluster):
    from click.testing import CliRunner

    from orchestrator.cli import main

    out = tmp_path / "tmp.json"
    result = CliRunner().invoke(
        main, ["bench", "--quick", "--out", str(out), "--data-dir", str(mnist_dir)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())  # valid JSON (no NaN)
    assert report["schema"] == "mpo-bench/1"
    assert report["quick"] is True
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    assert report["versions"]["torch"] and "mpo" in report["versions"]
    assert "bench" in report["command"]
    assert ray_cluster.is_initialized()  # the test session's cluster was reused, not shut down
    figures = {f["key"]: f for f in report["figures"]}
    assert set(figures) >= EXPECTED_KEYS
    for key, f in figures.items():
        assert f["status"] in STATUSES, key
        assert f["status"] != "error", (key, f["reason"])
        if f["status"] == "skipped":
            assert f["reason"], key
        elif key.startswith(("attack/", "peer/", "train/", "sweep/")):
            assert f["value"] is not None and math.isfinite(f["value"]), key
            lo, hi = f["spread"]
            assert lo <= f["value"] <= hi, key
    for key in ("attack/pgd_linf", "attack/pgd_l2", "attack/slide", "train/max"):
        assert figures[key]["target"] and figures[key]["status"] in ("pass", "miss"), key
    assert figures["sweep/tune_vs_inprocess"]["details"]["cluster_started_here"] is False
    if not report["machine"]["cuda_available"]:
        assert figures["gpu/paper_grid_gpu_hours"]["status"] == "skipped"
        assert "GPU" in figures["gpu/paper_grid_gpu_hours"]["reason"]
    assert report["summary"]["error"] == 0
    assert "PGD" in result.output and "wrote" in result.output


@pytest.mark.parametrize(
    ("op", "bound", "value", "met"),
    [("<=", 1.10, 1.05, True), ("<=", 1.10, 1.2, False), (">=", 2.0, 2.0, True),
     (">=", 2.0, 1.5, False)],
)
def test_target_and_ratio_figure(op, bound, value, met):
    from orchestrator.bench.figures import Target, ratio_figure

    target = Target(op, bound)
    assert target.met(value) is met
    fig = ratio_figure("k", "g", "t", [value * 0.9, value, value * 1.1], target=target,
                       times={"a": [1.0, 2.0, 3.0]})
    assert fig.value == pytest.approx(value)
    assert fig.spread == [pytest.approx(value * 0.9), pytest.approx(value * 1.1)]
    assert fig.times_s == {"a": 2.0}
    assert fig.status == ("pass" if met else "miss")
    assert fig.target == f"{op} {bound:g}"


def test_interleaved_runs_functions_in_turn():
    import torch

    from orchestrator.bench.figures import interleaved

    order: list[str] = []
    times = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                        reps=3, warmup=1, device=torch.device("cpu"))
    assert order == ["a", "b"] * 4
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_training_passes_counts_attack_steps_and_training_passes():
    import torch

    from jobs.config import make_train_config
    from orchestrator.bench.training_cost import train_configs, training_passes
    from orchestrator.bench.workload import Settings

    s = Settings.make(quick=True, device=torch.device("cpu"))
    configs = {k: make_train_config(v) for k, v in train_configs(s).items()}
    k = s.train_k
    assert training_passes(configs["nat"]) == 1
    assert training_passes(configs["single"]) == k + 1
    assert training_passes(configs["max"]) == 3 * k + 1
    assert training_passes(configs["avg"]) == 3 * k + 3  # trains on 3 x B inputs


def test_gpu_code_paths_on_cpu():
    """The GPU group's throughput and projection, exercised on the CPU with a tiny batch."""
    import torch

    from orchestrator.bench.gpu import adv_max_throughput, project_paper_grid

    r = adv_max_throughput("mnist-paper", torch.device("cpu"), steps=1, warmup=0, batch_size=2)
    assert r["examples_per_s"] > 0 and r["passes_per_example"] == 61
    proj = project_paper_grid({"mnist": 1e6, "cifar10": 1e5})
    total = proj["train_gpu_hours"] + proj["eval_gpu_hours"]
    assert proj["total_gpu_hours"] == pytest.approx(total)
    assert proj["train_gpu_hours"] > 0 and proj["eval_gpu_hours"] > 0
    assert proj["datasets_without_rate"] == []
    half = project_paper_grid({"mnist": 2e6, "cifar10": 2e5})
    assert half["total_gpu_hours"] == pytest.approx(proj["total_gpu_hours"] / 2)
    assert project_paper_grid({"mnist": 1e6})["datasets_without_rate"] == ["cifar10"]


def test_bench_refuses_cuda_without_gpu():
    import torch
    from click.testing import CliRunner

    from orchestrator.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(main, ["bench", "--device", "cuda", "--quick"])
    assert result.exit_code != 0
    assert "CUDA is not available" in result.output
