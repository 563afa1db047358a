"""Bad input never ends in a traceback: the real ``mpo`` executable, one subprocess per mistake.

Each case is a mistake a user can make (a grid, config, suite, spec, checkpoint, data root or run
folder that is not right, a missing library, a resource request the cluster cannot meet, a
changed grid on resume). For each: a non-zero exit, no ``Traceback`` in the output, and a message
that names the file or field and says what is allowed. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.config import recipe_path
from jobs.suite import suite_path
from orchestrator.grid import builtin_grid_path

MPO = shutil.which("mpo", path=str(Path(sys.executable).parent)) or "mpo"

BLOCK_FOOLBOX = '''
import importlib.abc, sys

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "foolbox" or name.startswith("foolbox."):
            raise ImportError("No module named 'foolbox' (blocked by the test)")
        return None

sys.meta_path.insert(0, _Block())
'''


def _yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every bad file of the table, and a real toy checkpoint and run folder to misuse."""
    from jobs.training import train
    from orchestrator.plan import load_plan
    from orchestrator.resources import make_resources
    from orchestrator.runfolder import prepare_run, settings_for

    d = tmp_path_factory.mktemp("bad-inputs")
    grid = yaml.safe_load(builtin_grid_path("toy").read_text())
    recipe = yaml.safe_load(recipe_path("toy").read_text())
    suite = yaml.safe_load(suite_path("toy").read_text())
    out: dict[str, Path] = {}

    def grid_variant(name, change):
        g = copy.deepcopy(grid)
        change(g)
        out[name] = _yaml(d / f"{name}.yaml", g)

    def config_variant(name, change):
        c = copy.deepcopy(recipe)
        change(c)
        out[name] = _yaml(d / f"{name}.yaml", c)

    def suite_variant(name, change):
        s = copy.deepcopy(suite)
        change(s)
        out[name] = _yaml(d / f"{name}.yaml", s)

    (d / "not-yaml.yaml").write_text("name: x\nexperiments: [\n")
    out["not_yaml"] = d / "not-yaml.yaml"
    grid_variant("grid_unknown_field", lambda g: g.update(colour="red"))
    grid_variant("grid_bad_strategy",
                 lambda g: g["experiments"]["toy"]["models"]["Nat"].update(strategy="natural"))
    grid_variant("grid_unknown_attack",
                 lambda g: g["experiments"]["toy"]["models"]["Adv_inf"].update(attacks=["linf2"]))
    grid_variant("grid_bad_epsilon",
                 lambda g: g["experiments"]["toy"]["attacks"]["linf"].update(epsilon=-0.3))
    grid_variant("grid_unknown_suite", lambda g: g["evaluation"]["toy"].update(suite="no-such-suite"))
    grid_variant("grid_changed", lambda g: g["experiments"]["toy"]["train"].update(epochs=4))
    grid_variant("grid_mlp_exact", lambda g: g["experiments"]["toy"]["train"].update(
        model={"name": "mlp"}))
    config_variant("config_unknown_field", lambda c: c.update(learning_rate=0.1))
    config_variant("config_zero_epochs", lambda c: c.update(epochs=0))
    config_variant("config_bad_model", lambda c: c["model"].update(name="resnet9000"))
    config_variant("config_single_two", lambda c: c.update(strategy="single"))
    config_variant("config_mnist", lambda c: c.update(
        dataset={"name": "mnist", "n_train": 100}, model={"name": "mnist_cnn_small"}, attacks=[],
        strategy="nat", epochs=1))
    suite_variant("suite_bad_kind", lambda s: s["attacks"][0].update(kind="white-box"))
    suite_variant("suite_bad_key", lambda s: s["attacks"][0]["spec"].update(epsilonn=0.3))
    (d / "not-a-checkpoint.pt").write_text("these are not weights\n")
    out["not_checkpoint"] = d / "not-a-checkpoint.pt"
    (d / "empty").mkdir()
    out["empty"] = d / "empty"
    out["checkpoint"] = train(dict(recipe, epochs=1), d / "toy-train").checkpoint
    plan, text, _ = load_plan("toy")
    res = make_resources(gpus_per_trial=0, cpus_per_trial=None, eval_workers=1, eval_cpus=None,
                         eval_gpus=None, cluster_gpus=0)
    out["run"] = prepare_run(plan, text, d / "runs" / "toy", command="mpo sweep toy",
                             settings=settings_for(res, max_failures=0, shard_retries=0,
                                                   data_dir=None, download=False)).path
    (d / "block").mkdir()
    (d / "block" / "sitecustomize.py").write_text(BLOCK_FOOLBOX)
    out["block"] = d / "block"
    import torch

    torch.save({"state_dict": {"weight": torch.zeros(10, 100), "head.bias": torch.zeros(3)}},
               d / "unfit.pt")  # for torch.nn.Linear(784, 10): bias missing, weight too small
    out["unfit_weights"] = d / "unfit.pt"
    return out


# (id, argv with {placeholders} from the files fixture, substrings the message must contain)
CASES: list[tuple[str, list[str], list[str]]] = [
    ("unknown grid", ["sweep", "no-such-grid"], ["no-such-grid", "shipped grids: ", "toy"]),
    ("grid not YAML", ["sweep", "{not_yaml}"], ["not-yaml.yaml", "not valid YAML"]),
    ("grid unknown field", ["sweep", "{grid_unknown_field}"],
     ["grid_unknown_field.yaml", "field 'colour': unknown field", "allowed fields: name"]),
    ("grid bad strategy", ["sweep", "{grid_bad_strategy}"],
     ["grid_bad_strategy.yaml", "experiments.toy.models.Nat.strategy", "'natural'", "'nat'"]),
    ("grid unknown training attack", ["sweep", "{grid_unknown_attack}"],
     ["grid_unknown_attack.yaml", "unknown attack 'linf2'", "allowed", "linf, l1"]),
    ("grid negative epsilon", ["sweep", "{grid_bad_epsilon}"],
     ["grid_bad_epsilon.yaml", "'epsilon'", "must be >= 0", "-0.3"]),
    ("grid unknown suite", ["sweep", "{grid_unknown_suite}"],
     ["grid_unknown_suite.yaml", "evaluation.toy.suite", "no-such-suite", "built-in suites"]),
    ("sweep without a grid", ["sweep"], ["give a GRID", "--resume RUN_DIR"]),
    ("resume a missing folder", ["sweep", "--resume", "{empty}/nothing"],
     ["nothing", "no such run folder"]),
    ("resume a folder that is not a run", ["sweep", "--resume", "{empty}"],
     ["empty", "not an mpo sweep run folder", "missing run.json"]),
    ("grid: exact attack on an mlp", ["sweep", "{grid_mlp_exact}"],
     ["grid_mlp_exact.yaml", "experiments.toy.models.Nat", "model 'mlp' is not affine",
      "'linf-exact' of type 'exact'", "suite: toy-nonlinear"]),
    ("changed grid on resume", ["sweep", "{grid_changed}", "--resume", "{run}"],
     ["grid_changed.yaml", "differs from the grid this run was started with", "epochs"]),
    ("negative eval workers", ["sweep", "toy", "--dry-run", "--eval-workers", "-1"],
     ["--eval-workers", "-1 is not in the range x>=0"]),
    ("resource the cluster lacks", ["sweep", "toy", "--num-cpus", "1", "--cpus-per-trial", "8",
                                    "--storage", "{empty}/runs"],
     ["bundle {'CPU': 8.0}", "largest node", "has CPU 1", "--cpus-per-trial"]),
    ("data root without MNIST", ["sweep", "mnist-mini", "--data-dir", "{empty}"],
     ["MNIST", "empty", "--data-dir"]),
    ("train: config unknown field", ["train", "{config_unknown_field}"],
     ["config_unknown_field.yaml", "field 'learning_rate'", "unknown"]),
    ("train: zero epochs", ["train", "{config_zero_epochs}"],
     ["config_zero_epochs.yaml", "field 'epochs' = 0", "greater than 0"]),
    ("train: unknown model", ["train", "{config_bad_model}"],
     ["config_bad_model.yaml", "model.name", "resnet9000", "valid models", "mnist_cnn"]),
    ("train: single with two attacks", ["train", "{config_single_two}"],
     ["config_single_two.yaml", "'single' needs exactly one attack, got 2"]),
    ("train: no such config", ["train", "no-such-recipe"],
     ["no-such-recipe", "not a recipe name", "toy"]),
    ("train: data root without MNIST", ["train", "{config_mnist}", "--data-dir", "{empty}",
                                        "--out", "{empty}/train"],
     ["MNIST", "empty", "--data-dir"]),
    ("eval: not a checkpoint", ["eval", "{not_checkpoint}", "--suite", "toy"],
     ["not-a-checkpoint.pt", "not a readable mpo checkpoint", "weights_only=True"]),
    ("eval: folder without checkpoint", ["eval", "{empty}", "--suite", "toy"],
     ["empty", "without checkpoint.pt"]),
    ("eval: unknown suite", ["eval", "{checkpoint}", "--suite", "no-such-suite"],
     ["no-such-suite", "built-in suites", "mnist-mini"]),
    ("eval: suite of another dataset", ["eval", "{checkpoint}", "--suite", "mnist-mini"],
     ["mnist", "toy"]),
    ("eval: suite bad kind", ["eval", "{checkpoint}", "--suite", "{suite_bad_kind}"],
     ["suite_bad_kind.yaml", "attacks[0].kind", "white-box", "first-order"]),
    ("eval: suite spec typo", ["eval", "{checkpoint}", "--suite", "{suite_bad_key}"],
     ["suite_bad_key.yaml", "attacks[0].spec", "'epsilonn'", "allowed keys"]),
    ("eval: unknown attack", ["eval", "{checkpoint}", "--suite", "toy", "--attack", "l2-pgd"],
     ["l2-pgd", "its attacks: linf-pgd"]),
    ("eval: no CUDA", ["eval", "{checkpoint}", "--suite", "toy", "--device", "cuda"],
     ["device 'cuda'", "CUDA is not available", "cpu or auto"]),
    ("eval: missing library", ["eval", "{checkpoint}", "--suite", "toy-nonlinear"],
     ["'foolbox'", "reinstall mpo"]),
    ("eval: factory module missing", ["eval", "--model", "no_such_pkg.models:net", "--dataset",
                                      "mnist", "--suite", "mnist-mini"],
     ["factory no_such_pkg.models:net", "cannot import module 'no_such_pkg.models'"]),
    ("eval: factory attribute missing", ["eval", "--model", "torch.nn:Linearr", "--dataset",
                                         "mnist", "--suite", "mnist-mini"],
     ["'torch.nn' has no attribute 'Linearr'", "did you mean Linear"]),
    ("eval: state dict does not fit", ["eval", "--model", "torch.nn:Linear", "--factory-kwargs",
                                       '{{"in_features": 784, "out_features": 10}}', "--weights",
                                       "{unfit_weights}", "--dataset", "mnist", "--suite",
                                       "mnist-mini"],
     ["unfit.pt does not fit the model", "missing 1: bias", "unexpected 1: head.bias",
      "weight [10, 100] vs model [10, 784]"]),
    ("eval: outputs not logits over the classes", ["eval", "--model", "torch.nn:Flatten",
                                                   "--dataset", "mnist", "--suite", "mnist-mini"],
     ["must return logits of shape [batch, 10] for mnist", "returned a tensor of shape [2, 784]"]),
    ("eval: external model without dataset", ["eval", "--model", "torch.nn:Flatten", "--suite",
                                              "mnist-mini"], ["--model needs --dataset"]),
    ("eval: two models", ["eval", "{checkpoint}", "--robustbench", "Ding2020MMA", "--suite",
                          "toy"], ["give one model", "CHECKPOINT, --robustbench"]),
    ("export: unknown format", ["export", "{run}", "--format", "xlsx"],
     ["--format 'xlsx'", "csv, json"]),
    ("report: missing folder", ["report", "{empty}/nothing"], ["nothing", "does not exist"]),
    ("report: not a run folder", ["report", "{empty}"], ["empty", "no results"]),
    ("report: unknown format", ["report", "{run}", "--format", "md,pdf"],
     ["--format", "'pdf'", "md", "html"]),
    ("status: not a run folder", ["status", "{empty}"], ["empty", "not an mpo run folder", "missing manifest.json"]),
    ("grids show: unknown grid", ["grids", "show", "no-such-grid"], ["no-such-grid", "toy"]),
    ("data check: unknown dataset", ["data", "check", "cifar100"],
     ["'cifar100'", "valid datasets", "cifar10, mnist, toy"]),
    ("data fetch: generated dataset", ["data", "fetch", "toy"], ["'toy'", "nothing to fetch"]),
    ("theory: bad dimension", ["theory", "--d", "0"], ["d = 0", ">= 1"]),
    ("bench: no CUDA", ["bench", "--device", "cuda"], ["CUDA is not available"]),
]


def _argv(argv: list[str], files: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]


def _run(args: list[str], files: dict[str, Path], env_extra: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPO_DEBUG": "", "RAY_AUTH_MODE": "disabled", "COLUMNS": "200",
           **(env_extra or {})}
    env.pop("MPO_DATA_DIR", None)
    return subprocess.run([MPO, *args], capture_output=True, text=True, timeout=300, env=env,
                          cwd=cwd or files["empty"])


def test_at_least_25_distinct_bad_inputs():
    assert len({case[0] for case in CASES}) == len(CASES) >= 25


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_short_message(files, argv, expect):
    env = {"PYTHONPATH": str(files["block"])} if "reinstall mpo" in expect else None
    res = _run(_argv(argv, files), files, env)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "Traceback" not in out, out
    for text in expect:
        assert text in out, f"{text!r} not in:\n{out}"
    assert len(out.strip().splitlines()) <= 12, out


@pytest.mark.slow
def test_debug_shows_the_traceback(files):
    for extra_args, env in ((["--debug"], None), ([], {"MPO_DEBUG": "1"})):
        res = _run([*extra_args, "train", "no-such-recipe"], files, env)
        assert res.returncode != 0
        assert "Traceback" in res.stderr and "ConfigError" in res.stderr, res.stderr
