"""mpo bench: the quick run writes valid JSON with every figure present (targets not asserted:
speed is the bench's business, not the tests'), and the pieces behave on tiny inputs."""

from __future__ import annotations

import json
import math

import pytest

from jobs.strategy_table import STRATEGIES as STRATEGY_TABLE_NAMES

ATTACK_KEYS = {f"attack/{name}_k{k}" for k in (10, 20) for name in ("pgd_linf", "pgd_l2", "slide")}
STRATEGIES = tuple(STRATEGY_TABLE_NAMES)
EXPECTED_KEYS = ATTACK_KEYS | {
    "peer/pgd_linf_vs_torchattacks", "peer/slide_vs_foolbox", "peer/rt_grid_vs_foolbox",
    "peer/pgd_linf_vs_torchattacks_stop", "peer/slide_vs_foolbox_stop",
    "peer/rt_grid_vs_foolbox_early_stop",
    "exec/channels_last_mnist_cnn_attack", "exec/channels_last_mnist_cnn_update",
    "exec/channels_last_wrn_attack", "exec/channels_last_wrn_update",
    "exec/compile_attack", "exec/compile_update", "exec/bf16_attack", "exec/bf16_update",
    *(f"train/{s}" for s in STRATEGIES),
    *(f"train/{s}_vs_single" for s in STRATEGIES[2:]),
    "sweep/tune_vs_inprocess", "sweep/per_trial_overhead", "sweep/tune_parallel_vs_inprocess",
    "sweep/eval_fanout_speedup", "sweep/quickstart_wall", "sweep/toy_utilisation",
    "sweep/mnist_utilisation", "suite/toy", "suite/mnist-mini", "suite/mnist-paper",
    "projection/mnist_adv_max_examples_per_s", "projection/cifar10_wrn_adv_max_examples_per_s",
    "projection/paper_grid_hours",
    "cli/grids", "cli/status", "cli/missing_config", "cli/missing_run", "cli/refused_option",
    "cli/missing_data",
}
STATUSES = {"pass", "miss", "info", "skipped", "error"}


@pytest.mark.slow  # 80 s on the shared 2-core machine at load average 6-7
@pytest.mark.ray
@pytest.mark.peer
def test_bench_quick_cli_writes_every_figure(tmp_path, mnist_dir, ray_cluster):
    from click.testing import CliRunner

    from orchestrator.cli import main

    out, page = tmp_path / "tmp.json", tmp_path / "BENCH.md"
    page.write_text("| figure | key | before | value (spread) | target | status | notes |\n"
                    "| PGD | `attack/pgd_linf_k10` |  | 1.23 (1.1-1.3) | <= 1.05 | miss | |\n")
    result = CliRunner().invoke(
        main, ["bench", "--quick", "--out", str(out), "--page", str(page),
               "--data-dir", str(mnist_dir)]
    )
    assert result.exit_code == 0, result.output
    # written to a pipe, progress lines are plain and as long as their text (not padded)
    progress = [line for line in result.output.splitlines() if "1/8 attack efficiency" in line]
    assert progress and all(len(line) < 80 for line in progress), result.output[:2000]
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
        elif key.startswith(("attack/", "peer/", "train/", "sweep/", "cli/")):
            assert f["value"] is not None and math.isfinite(f["value"]), key
            lo, hi = f["spread"]
            assert lo <= f["value"] <= hi, key
    for key in (*ATTACK_KEYS, *(f"train/{s}" for s in STRATEGIES), "train/eat_vs_single",
                "train/random_vs_single", "peer/pgd_linf_vs_torchattacks"):
        assert figures[key]["target"] and figures[key]["status"] in ("pass", "miss"), key
    for s in STRATEGIES:  # the ideal counts the passes that ran
        passes = figures[f"train/{s}"]["details"]["passes_per_example"]
        assert passes["update_fwd"] == (3 if s == "avg" else 1), s
        assert passes["attack_fwd"] >= passes["attack_bwd"] == {"nat": 0, "single": 5, "msd": 5,
                                                                "eat": 5, "random": 5}.get(s, 15)
    assert figures["exec/compile_attack"]["status"] == "skipped"  # not in --quick
    # a suite's cost per 100 points, the previous toy suite's beside it; mnist-mini not in --quick
    toy = figures["suite/toy"]
    assert toy["unit"] == "s" and toy["value"] > 0 and toy["details"]["before"] > 0
    assert figures["suite/mnist-mini"]["status"] == "skipped"
    assert figures["suite/mnist-mini"]["target"] == "<= 84"
    assert figures["sweep/tune_vs_inprocess"]["details"]["cluster_started_here"] is False
    for key in ("sweep/quickstart_wall", "sweep/mnist_utilisation"):  # each its own cluster
        assert figures[key]["status"] == "skipped" and figures[key]["target"], key
    if not report["machine"]["cuda_available"]:
        assert figures["projection/paper_grid_hours"]["status"] == "skipped"
        assert "GPU" in figures["projection/paper_grid_hours"]["reason"]
    assert report["summary"]["error"] == 0
    assert "PGD" in result.output and "wrote" in result.output
    for key in ("cli/grids", "cli/refused_option"):  # seconds, against the 0.5 s target
        assert figures[key]["unit"] == "s" and figures[key]["target"] == "<= 0.5", key
    # the page: every figure once, the previous page's value in "before"
    text = page.read_text()
    for key in figures:
        assert text.count(f"| `{key}` |") == 1, key
    row = next(line for line in text.splitlines() if "`attack/pgd_linf_k10`" in line)
    assert row.split(" | ")[2] == "1.23"
    assert "mpo bench --quick" in text


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
    assert set(configs) == set(STRATEGIES)
    k = s.train_k
    assert training_passes(configs["nat"]) == 1
    assert training_passes(configs["single"]) == k + 1
    assert training_passes(configs["max"]) == 3 * k + 1
    assert training_passes(configs["avg"]) == 3 * k + 3  # trains on 3 x B inputs
    assert training_passes(configs["random"]) == training_passes(configs["eat"]) == k + 1
    assert training_passes(configs["msd"]) == k * (1 + 3) + 1  # 3 candidate forwards per step


def test_ideal_seconds_prices_each_pass_at_its_batch_size():
    from orchestrator.bench.training_cost import ideal_seconds

    units = {"attack": 3.0, "forward": 1.0, "forward_wide": 2.4, "update": 4.0, "update_wide": 9.0}
    m = {"attack_bwd_per_example": 10, "attack_fwd_per_example": 10.5, "update_fwd_per_example": 1}
    assert ideal_seconds(m, units, strategy="single", wide=3) == 10 * 3.0 + 0.5 * 1.0 + 4.0
    msd = {"attack_bwd_per_example": 10, "attack_fwd_per_example": 40, "update_fwd_per_example": 1}
    assert ideal_seconds(msd, units, strategy="msd", wide=3) == pytest.approx(30 + 30 * 0.8 + 4)
    avg = {"attack_bwd_per_example": 30, "attack_fwd_per_example": 30, "update_fwd_per_example": 3}
    assert ideal_seconds(avg, units, strategy="avg", wide=3) == pytest.approx(90 + 9.0)


def test_gpu_code_paths_on_cpu():
    """The projection group's throughput and projection, exercised on the CPU with a tiny batch."""
    import torch

    from orchestrator.bench.gpu import adv_max_throughput, project_paper_grid

    r = adv_max_throughput("mnist-paper", torch.device("cpu"), steps=1, warmup=0, batch_size=2)
    assert r["examples_per_s"] > 0 and r["passes_per_example"] == 61
    assert (r["layout"], r["precision"]) == ("channels_last", "fp32")
    bf16 = adv_max_throughput("mnist-paper", torch.device("cpu"), steps=1, warmup=0,
                              batch_size=2, layout="contiguous", precision="bf16")
    assert bf16["examples_per_s"] > 0 and bf16["layout"] == "contiguous"
    proj = project_paper_grid({"mnist": 1e6, "cifar10": 1e5})
    assert proj["models"] == 53  # 27 from scratch, 11 fine-tunes, 15 soups
    assert proj["total_hours"] == pytest.approx(proj["train_hours"] + proj["eval_hours"])
    assert proj["train_hours"] > 0 and proj["eval_hours"] > 0
    assert proj["datasets_without_rate"] == []
    half = project_paper_grid({"mnist": 2e6, "cifar10": 2e5})
    assert half["total_hours"] == pytest.approx(proj["total_hours"] / 2)
    assert project_paper_grid({"mnist": 1e6})["datasets_without_rate"] == ["cifar10"]


@pytest.mark.slow  # about 90 s on 2 cores: the WRN-32-10 steps on the CPU dominate
@pytest.mark.peer
def test_projection_script_runs_on_the_cpu(tmp_path, mnist_dir):
    """``mpo bench --projection`` (the GPU script) on the CPU with --quick: the attack, peer and
    execution groups and the projection from the CPU's rates; nothing else is measured."""
    from click.testing import CliRunner

    from orchestrator.cli import main

    out = tmp_path / "proj.json"
    result = CliRunner().invoke(main, ["bench", "--device", "cpu", "--projection", "--quick",
                                       "--out", str(out), "--data-dir", str(mnist_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["projection"] is True and report["device"] == "cpu"
    figures = {f["key"]: f for f in report["figures"]}
    assert {f["group"] for f in figures.values()} == {"attack", "peer", "exec", "projection"}
    assert report["summary"]["error"] == 0
    proj = figures["projection/paper_grid_hours"]
    assert proj["status"] == "info" and proj["value"] > 0 and proj["details"]["device"] == "cpu"
    assert proj["details"]["models"] == 53 and proj["details"]["bf16_total_hours"] > 0
    for name in ("mnist_adv_max_examples_per_s", "cifar10_wrn_adv_max_examples_per_s"):
        f = figures[f"projection/{name}"]
        assert f["value"] > 0 and set(f["details"]["speedup"]) == {"fp32", "contiguous", "bf16"}
    assert "projected" in result.output and "wrote" in result.output


def test_bench_refuses_cuda_without_gpu():
    import torch
    from click.testing import CliRunner

    from orchestrator.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(main, ["bench", "--device", "cuda", "--quick"])
    assert result.exit_code != 0
    assert "CUDA is not available" in result.output


def test_page_reads_before_from_its_own_table_not_the_notes(tmp_path):
    from orchestrator.bench.page import BEGIN, END, write_page

    page = tmp_path / "BENCH.md"
    page.write_text(f"intro\n{BEGIN}\n| t | `sweep/quickstart_wall` |  | 68.5 s (68-69) | <= 30 | miss | |\n"
                    f"{END}\nnotes\n| t | `sweep/quickstart_wall` | 99.0 s | <= 30 s | miss |\n")
    report = {"machine": {"cpu": "c", "cores": 2, "memory_gib": 1.0, "load_average_start": None},
              "command": "mpo bench", "created": "now", "device": "cpu", "seconds": 1.0,
              "versions": {"torch": "t", "ray": "r"}, "summary": {"miss": 1},
              "figures": [{"key": "sweep/quickstart_wall", "title": "q", "status": "miss",
                           "value": 44.0, "unit": "s", "target": "<= 30",
                           "spread": [43.0, 45.0]}]}
    text = write_page(report, page).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| q |"))
    assert row.split(" | ")[2] == "68.5 s"
    assert text.startswith("intro\n") and text.rstrip().endswith("| <= 30 s | miss |")
