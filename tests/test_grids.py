"""Grids: validation errors that name the file, field, value and allowed values; expansion with
deduplication by model id; every shipped grid's dry run; `mpo grids`; `mpo status` errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from jobs.strategy_table import STRATEGIES
from orchestrator.cli import main
from orchestrator.grid import GridError, builtin_grid_names, load_grid, parse_grid
from orchestrator.plan import expand_grid, load_plan

TOY = {
    "name": "t",
    "evaluation": {"toy": {"suite": "toy", "n_test": 40, "shard_size": 20}},
    "experiments": {
        "toy": {
            "train": {"dataset": {"name": "toy"}, "model": {"name": "linear"}, "epochs": 1,
                      "batch_size": 100},
            "attacks": {"linf": {"type": "linf", "epsilon": 0.4, "k": 3},
                        "l1": {"type": "l1", "epsilon": 2.0, "k": 3}},
            "models": {"Nat": {"strategy": "nat"},
                       "Adv_inf": {"strategy": "single", "attacks": ["linf"]}},
        }
    },
}

PAPER_MODELS = {  # the paper's models, then MSD (l_p groups only), E-AT and random
    "mnist-lp": ["Nat", "Adv_inf", "Adv_1", "Adv_2", "Adv_avg", "Adv_max", "Adv_msd", "Adv_eat", "Adv_rand"],
    "mnist-rt": ["Nat", "Adv_inf", "Adv_RT", "Adv_avg", "Adv_max", "Adv_eat", "Adv_rand"],
    "cifar10-l1": ["Nat", "Adv_inf", "Adv_1", "Adv_avg", "Adv_max", "Adv_msd", "Adv_eat", "Adv_rand"],
    "cifar10-rt": ["Nat", "Adv_inf", "Adv_RT", "Adv_avg", "Adv_max", "Adv_eat", "Adv_rand"],
}


def with_change(path: list, value, base=TOY) -> dict:
    data = json.loads(json.dumps(base))
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


def write(tmp_path: Path, data: dict, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


#: the strategies as a refused name's message lists them (from the one strategy table)
STRATEGY_CHOICES = re.escape(", ".join(f"'{n}'" for n in list(STRATEGIES)[:-1])
                             + f" or '{list(STRATEGIES)[-1]}'")


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["experiments", "toy", "models", "Nat", "strategy"], "sngle",
         r"field 'experiments\.toy\.models\.Nat\.strategy' = 'sngle'.*" + STRATEGY_CHOICES),
        (["experiments", "toy", "modles"], {},
         r"field 'experiments\.toy\.modles': unknown field; allowed fields: families, affine, "
         r"train, attacks, models"),
        (["evaluation", "toy", "n_test"], 0,
         r"field 'evaluation\.toy\.n_test' = 0: Input should be greater than or equal to 1"),
        (["evaluation", "toy", "suite"], KeyError, r"field 'evaluation\.toy\.suite': required"),
        (["experiments", "toy", "models", "Adv_inf", "attacks"], ["l2"],
         r"unknown attack 'l2'; allowed \(this experiment's attacks table\): linf, l1"),
        (["experiments", "toy", "train", "seed"], 3,
         r"'seed' is set per model by the grid"),
        (["evaluation"], {"mnist": {"suite": "mnist-mini", "n_test": 5, "shard_size": 5}},
         r"dataset 'toy' has no evaluation plan; evaluation: has mnist"),
        (["seeds"], [0, 0], r"seeds \[0, 0\] has duplicates"),
    ],
    ids=["strategy", "typo", "n_test", "missing-suite", "attack-name", "train-seed", "no-eval",
         "seeds"],
)
def test_schema_errors_name_file_field_value_and_allowed(tmp_path, path, value, expected):
    grid_file = write(tmp_path, with_change(path, value))
    with pytest.raises(GridError, match=expected) as info:
        load_grid(grid_file)
    assert str(grid_file) in str(info.value)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["experiments", "toy", "train", "optimizer"], {"name": "rmsprop"},
         r"models\.Nat.*field 'optimizer\.name' = 'rmsprop'.*'adam' or 'sgd'"),
        (["experiments", "toy", "attacks", "linf", "epsilon"], -1,
         r"attack spec key 'epsilon'"),
        (["evaluation", "toy", "suite"], "no-such-suite",
         r"field 'evaluation\.toy\.suite' = 'no-such-suite': unknown suite.*built-in suites"),
        (["experiments", "toy", "families"], ["linf", "rt"],
         r"field 'experiments\.toy\.families' = 'rt': suite 'toy' has no attack of that family; "
         r"allowed: l1, linf"),
    ],
    ids=["optimizer", "attack-spec", "suite", "family"],
)
def test_expansion_errors_name_file_and_field(tmp_path, path, value, expected):
    grid_file = write(tmp_path, with_change(path, value))
    with pytest.raises(GridError, match=expected) as info:
        load_plan(grid_file)
    assert str(grid_file) in str(info.value)


def test_not_a_grid(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(bad)
    with pytest.raises(GridError, match=r"shipped grids: .*toy"):
        load_grid("no-such-grid")
    with pytest.raises(GridError, match="no such grid file"):
        load_grid(tmp_path / "missing.yaml")


def test_identical_configs_in_two_groups_are_one_trial():
    data = json.loads(json.dumps(TOY))
    data["experiments"]["toy"]["families"] = ["linf", "l1"]
    data["experiments"]["toy-linf"] = {**data["experiments"]["toy"], "families": ["linf"]}
    data["experiments"]["toy-linf"]["models"] = {
        "Nat": {"strategy": "nat"},
        "Adv_1": {"strategy": "single", "attacks": ["l1"]},
    }
    plan = expand_grid(parse_grid(data, source="inline"))
    assert sorted(t.label for t in plan.trials.values()) == ["Adv_1", "Adv_inf", "Nat"]
    (nat,) = [t for t in plan.trials.values() if t.label == "Nat"]
    assert nat.groups == ["toy", "toy-linf"]
    assert nat.model_id in plan.groups["toy"].models and nat.model_id in plan.groups["toy-linf"].models
    # every trial is evaluated on the union of its groups' families, two shards per attack
    assert sorted(nat.attacks) == sorted(a.name for a in plan.suites["toy"].attacks)
    assert len(plan.trial_shards(nat.model_id)) == 2 * len(nat.attacks)


def test_one_model_one_label():
    data = json.loads(json.dumps(TOY))
    data["experiments"]["other"] = json.loads(json.dumps(data["experiments"]["toy"]))
    data["experiments"]["other"]["models"] = {"Clean": {"strategy": "nat"}}
    data["experiments"]["other"]["families"] = ["linf"]
    with pytest.raises(GridError, match=r"same training config as 'Nat'.*use 'Nat' here too"):
        expand_grid(parse_grid(data, source="inline"))


def test_seeds_multiply_trials_and_restarts_override_the_suite():
    data = with_change(["seeds"], [0, 1])
    data["evaluation"]["toy"]["restarts"] = 3
    plan = expand_grid(parse_grid(data, source="inline"))
    assert len(plan.trials) == 4
    assert {t.config["seed"] for t in plan.trials.values()} == {0, 1}
    restartable = [a for a in plan.suites["toy"].attacks if a.spec.to_dict()["type"] in ("linf", "l1", "l2")]
    assert restartable and all(a.spec.to_dict()["reps"] == 3 for a in restartable)


@pytest.mark.parametrize("name", builtin_grid_names())
def test_every_shipped_grid_dry_runs(name):
    plan, _, _ = load_plan(name)
    result = CliRunner(env={"COLUMNS": "250"}).invoke(main, ["sweep", name, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run" in result.output and "nothing started" in result.output
    for mid, trial in plan.trials.items():
        assert mid in result.output and trial.label in result.output
    assert f"{len(plan.shards)} evaluation shards" in result.output
    # GPU auto is shown for a CPU-only cluster: the trial and its worker share one CPU
    assert "bundles: [{'CPU': 0.5}, {'CPU': 0.5}]" in result.output


def test_paper_grid_lists_every_model_of_the_paper():
    plan, _, _ = load_plan("paper-grid")
    for group, labels in PAPER_MODELS.items():
        got = [plan.trials[m].label for m in plan.groups[group].models
               if not plan.trials[m].parents]  # trained from scratch
        assert got == labels, group
    # Nat and Adv_inf are shared by the l_p and RT tables of each dataset: 27 distinct models
    # from scratch; then per group E-AT and single-threat fine-tunes of Adv_inf (FT_inf shared
    # by the l_p and RT groups of a dataset: 11 in all) and three soups per soup family (15)
    assert len([t for t in plan.trials.values() if not t.parents]) == 27
    assert len([t for t in plan.trials.values() if t.parents and t.strategy != "soup"]) == 11
    assert len([t for t in plan.trials.values() if t.strategy == "soup"]) == 15
    for group in plan.groups.values():
        by_label = {plan.trials[m].label: plan.trials[m] for m in group.models}
        ft = by_label["FT_eat"]
        assert ft.config["attacks"] == by_label["Adv_max"].config["attacks"]
        assert ft.parents == [next(m for m in group.models if plan.trials[m].label == "Adv_inf")]
        scratch = by_label["Adv_inf"].config
        assert ft.config["epochs"] == scratch["epochs"] * 3 / 80  # E-AT: 3 epochs after 80
        assert ft.config["optimizer"]["lr"] == scratch["optimizer"]["lr"] / 2
        assert ft.config["start_small"] is False
    # the strategies beyond the paper train with Adv_max's attacks
    for group in plan.groups.values():
        by_label = {plan.trials[m].label: plan.trials[m] for m in group.models}
        attacks = by_label["Adv_max"].config["attacks"]
        for label in ("Adv_msd", "Adv_eat", "Adv_rand"):
            if label in by_label:
                assert by_label[label].config["attacks"] == attacks, (group.name, label)
    assert {t.dataset for t in plan.trials.values()} == {"mnist", "cifar10"}
    mnist = next(t for t in plan.trials.values() if t.dataset == "mnist")
    cifar = next(t for t in plan.trials.values() if t.dataset == "cifar10")
    assert (mnist.config["epochs"], mnist.config["model"]["name"]) == (10, "mnist_cnn")
    assert (cifar.config["epochs"], cifar.config["model"]["name"]) == (205, "wrn")
    assert plan.grid.evaluation["mnist"].n_test == plan.grid.evaluation["cifar10"].n_test == 1000


def test_paper_grid_is_the_union_of_its_parts():
    paper, _, _ = load_plan("paper-grid")
    parts = {}
    for name in ("mnist-lp", "mnist-rt", "cifar-lp", "cifar-rt"):
        plan, _, _ = load_plan(name)
        parts.update({mid: t.label for mid, t in plan.trials.items()})
    assert parts == {mid: t.label for mid, t in paper.trials.items() if not t.parents}


def test_mnist_mini_and_toy_are_cpu_sized():
    mini, _, _ = load_plan("mnist-mini")
    scratch = [t for t in mini.trials.values() if not t.parents]
    assert len(scratch) == 14  # 9 l_p models and 7 RT ones, Nat and Adv_inf shared
    # fine-tunes of Adv_inf: FT_eat per group, FT_inf (shared), FT_1, FT_2, FT_RT; one soup
    # (0.5, 0.5) for each of Soup_inf_1, Soup_inf_2, Soup_inf_RT
    assert len(mini.trials) == 14 + 6 + 3
    assert all(t.config["model"]["name"] == "mnist_cnn_small" for t in mini.trials.values())
    assert {t.config["strategy"] for t in scratch} == {
        "nat", "single", "avg", "max", "msd", "eat", "random"}
    # 10-step training attacks (paper-grid's 20, at twice the step), for twice the epochs
    assert {a["k"] for t in mini.trials.values() for a in t.config["attacks"]
            if a["type"] != "rt"} == {10}
    assert {t.config["epochs"] for t in scratch} == {12}
    # at least the 100 test points `mpo audit` samples by default
    assert mini.grid.evaluation["mnist"].n_test >= 100
    toy, _, _ = load_plan("toy")
    assert sorted(t.label for t in toy.trials.values()) == sorted(
        ["Nat", "Adv_inf", "Adv_1", "Adv_avg", "Adv_max"])
    linf = next(t for t in toy.trials.values() if t.label == "Adv_inf").config["attacks"][0]
    assert linf["epsilon"] == pytest.approx(2 * 2.0 / 99**0.5)


def test_grids_command_lists_and_shows():
    result = CliRunner(env={"COLUMNS": "250"}).invoke(main, ["grids"])
    assert result.exit_code == 0, result.output
    for name in builtin_grid_names():
        assert name in result.output
    assert "53" in result.output  # paper-grid's trials
    shown = CliRunner().invoke(main, ["grids", "show", "toy"])
    assert shown.exit_code == 0 and "name: toy" in shown.output
    missing = CliRunner().invoke(main, ["grids", "show", "nope"])
    assert missing.exit_code != 0 and "shipped grids" in missing.output


def test_sweep_usage_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["sweep"])
    assert result.exit_code != 0 and "give a GRID" in result.output
    result = runner.invoke(main, ["sweep", "--resume", str(tmp_path)])
    assert result.exit_code != 0 and "not an mpo sweep run folder" in result.output
    result = runner.invoke(main, ["sweep", "toy", "--storage", "s3://bucket/runs"])
    assert result.exit_code != 0 and "mount the bucket" in result.output
    bad = write(tmp_path, with_change(["experiments", "toy", "models", "Nat", "strategy"], "x"))
    result = runner.invoke(main, ["sweep", str(bad), "--dry-run"])
    assert result.exit_code != 0 and "strategy" in result.output


def test_status_of_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert result.exit_code != 0 and "not an mpo run folder" in result.output


def test_mpo_help_imports_no_ray():
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from orchestrator.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); "
            "CliRunner().invoke(main, ['sweep', '--help']); "
            "CliRunner().invoke(main, ['sweep', 'toy', '--dry-run']); "
            "print('ray' in sys.modules, r.exit_code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "0"]
