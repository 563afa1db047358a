"""External models: a PyTorch factory with a state dict, a TorchScript file and a RobustBench zoo
entry, evaluated end to end through `mpo eval` and read back by `mpo report` and `mpo export`;
the input wrapper, stable ids, clear errors for models that do not fit, grids with
evaluation-only entries, and one sweep that evaluates an external model beside a trained one."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

from jobs.external import ExternalModel, ExternalModelError, parse_external
from jobs.external.load import InputScaling, check_logits, load_external
from orchestrator.cli import main
from tests.test_data import _write_cifar, no_published_checksum  # noqa: F401 (a fixture)

FACTORY = "tests.external_models:small_cnn"
CPU = torch.device("cpu")

MNIST_SUITE = {
    "name": "mnist-ext", "dataset": "mnist", "seed": 0, "n_test": 20,
    "groups": {"lp": {"families": ["linf", "l2"], "affine": []}},
    "attacks": [
        {"name": "linf-pgd", "kind": "first-order", "spec": {"type": "linf", "epsilon": 0.3, "k": 3}},
        {"name": "l2-pgd", "kind": "first-order", "spec": {"type": "l2", "epsilon": 2.0, "k": 3}},
    ],
}


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A state dict of small_cnn (seeded init), saved as checkpoints commonly are."""
    from tests.external_models import small_cnn

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "small_cnn.pt"
    torch.save({"state_dict": small_cnn().state_dict(), "epoch": 3}, path)
    return path


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "mnist-ext.yaml"
    path.write_text(yaml.safe_dump(MNIST_SUITE))
    return path


def _read_rows(run: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(run.glob("results/*/*.parquet"))])


def _check_run(run: Path, *, label: str, source: str, digest: str) -> dict:
    """The run folder of one external model: rows, manifest, report and export agree."""
    rows = _read_rows(run)
    assert len(rows) == 2 * 20 and set(rows["strategy"]) == {"external"}
    assert set(rows["model_label"]) == {label} and rows["seed"].isna().all()
    assert set(rows["checkpoint_digest"]) == {digest}
    (model_id,) = set(rows["model_id"])
    trial = json.loads((run / "manifest.json").read_text())["trials"][model_id]
    assert trial["strategy"] == "external" and trial["config"]["external"]["source"] == source
    assert trial["config"]["external"]["weights_digest"] == digest

    _cli("report", str(run), "--quiet")
    assert f"| {label} | 20 |" in (run / "report" / "report.md").read_text()
    _cli("export", str(run), "--rows")
    acc = pd.read_csv(run / "export" / "accuracy.csv")
    union = acc[(acc["model_id"] == model_id) & (acc["measure"] == "union")]
    robust = rows.groupby("index")["robust"].all()
    assert union["accuracy"].tolist() == [pytest.approx(robust.mean())]
    assert set(acc["source"]) == {source}
    assert len(pd.read_csv(run / "export" / "rows.csv")) == len(rows)
    info = json.loads((run / "export" / "model_info" / "mnist" / "lp" / f"{model_id}.json").read_text())
    assert info["name"] == label and info["eps"] == "0.3" and info["mpo_source"] == source
    assert info["mpo_union_acc"] == f"{100 * robust.mean():.2f}"
    return {"model_id": model_id, "rows": rows}


@pytest.fixture(scope="module")
def factory_run(tmp_path_factory, weights, suite_file, mnist_dir) -> dict:
    run = tmp_path_factory.mktemp("factory-run") / "run"
    _cli("eval", "--model", FACTORY, "--weights", str(weights), "--dataset", "mnist",
         "--suite", str(suite_file), "--out", str(run), "--data-dir", str(mnist_dir))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    return _check_run(run, label="small_cnn", source=FACTORY, digest=digest)


def test_factory_model_end_to_end(factory_run):
    assert factory_run["model_id"].startswith("mnist-external-small_cnn-")


def test_torchscript_model_end_to_end(tmp_path, weights, suite_file, mnist_dir, factory_run):
    from tests.external_models import small_cnn

    model = small_cnn()
    model.load_state_dict(torch.load(weights, weights_only=True)["state_dict"])
    scripted = tmp_path / "scripted_cnn.pt"
    torch.jit.script(model.eval()).save(str(scripted))
    run = tmp_path / "run"
    _cli("eval", "--model", str(scripted), "--dataset", "mnist", "--suite", str(suite_file),
         "--out", str(run), "--data-dir", str(mnist_dir), "--label", "Scripted")
    digest = hashlib.sha256(scripted.read_bytes()).hexdigest()
    out = _check_run(run, label="Scripted", source="scripted_cnn.pt", digest=digest)
    # the same weights, so the same clean predictions as the factory model
    key = ["attack", "index"]
    a = out["rows"].sort_values(key)["clean_pred"].tolist()
    b = factory_run["rows"].sort_values(key)["clean_pred"].tolist()
    assert a == b


def test_evaluating_again_reuses_every_shard(tmp_path, weights, suite_file, mnist_dir):
    run = tmp_path / "run"
    args = ["eval", "--model", FACTORY, "--weights", str(weights), "--dataset", "mnist",
            "--suite", str(suite_file), "--out", str(run), "--data-dir", str(mnist_dir)]
    _cli(*args)
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("results/*/*.parquet")}
    _cli(*args)
    assert {p: p.stat().st_mtime_ns for p in run.glob("results/*/*.parquet")} == stamps


# ----------------------------------------------------------------------------------------------
# The wrapper and the identity


@pytest.mark.parametrize(("input_range", "mean", "std"), [
    ((0.0, 1.0), None, None),
    ((0.0, 255.0), None, None),
    ((0.0, 255.0), [125.3], [63.0]),
    ((-1.0, 1.0), [0.1], [0.5]),
])
def test_wrapper_maps_unit_inputs_to_the_models_scale(input_range, mean, std):
    from tests.external_models import Recorder

    inner = Recorder()
    wrapped = InputScaling(inner, input_range=input_range, mean=mean, std=std)
    x = torch.rand(3, 1, 28, 28, requires_grad=True)
    wrapped(x).sum().backward()
    lo, hi = input_range
    want = x.detach() * (hi - lo) + lo
    if mean is not None:
        want = (want - mean[0]) / std[0]
    assert torch.allclose(inner.seen[0], want, atol=1e-5)
    assert x.grad is not None and x.grad.abs().sum() > 0  # attacks get gradients in [0, 1]


def _spec(**kw) -> ExternalModel:
    return parse_external({"dataset": "mnist", **kw}, source="test")


def test_model_id_hashes_source_weights_and_wrapper_not_paths(tmp_path, weights):
    moved = tmp_path / "elsewhere" / "renamed.pt"
    moved.parent.mkdir()
    shutil.copy(weights, moved)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {k: v + 1 for k, v in torch.load(
        weights, weights_only=True)["state_dict"].items()}}, other)

    def mid(**kw) -> str:
        return load_external(_spec(factory=FACTORY, **kw), device=CPU).model_id

    base = mid(weights=str(weights))
    assert mid(weights=str(moved)) == base
    assert mid(weights=str(other)) != base
    assert mid(weights=str(weights), input_range=[0, 255]) != base
    assert mid(weights=str(weights), mean=[0.1], std=[0.3]) != base
    assert mid(weights=str(weights), factory_kwargs={"width": 4}) != base
    assert mid() != base
    assert load_external(_spec(factory=FACTORY), device=CPU, label="X").label == "X"


@pytest.mark.parametrize("layout", ["plain", "model_key", "data_parallel"])
def test_state_dict_layouts(tmp_path, weights, layout):
    state = torch.load(weights, weights_only=True)["state_dict"]
    payload = {"plain": state, "model_key": {"model": state, "step": 10},
               "data_parallel": {f"module.{k}": v for k, v in state.items()}}[layout]
    path = tmp_path / "w.pt"
    torch.save(payload, path)
    ext = load_external(_spec(factory=FACTORY, weights=str(path)), device=CPU)
    got = ext.module.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())


# ----------------------------------------------------------------------------------------------
# Clear errors


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def _bad_weights(tmp_path: Path, kind: str) -> Path:
    from tests.external_models import small_cnn

    state = small_cnn().state_dict()
    path = tmp_path / f"{kind}.pt"
    if kind == "unfit":
        state.pop("0.bias")
        state["4.weight"] = torch.zeros(10, 5)
        state["head.weight"] = torch.zeros(3)
        torch.save(state, path)
    elif kind == "pickled":
        torch.save({"state_dict": state, "hook": _Evil()}, path)
    else:
        torch.save({"epoch": 3, "notes": "no tensors here"}, path)
    return path


@pytest.mark.parametrize(("spec", "match"), [
    ({"factory": "no_such_pkg.models:net"}, r"cannot import module 'no_such_pkg\.models'"),
    ({"factory": "tests.external_models:small_cn"},
     r"'tests\.external_models' has no attribute 'small_cn'; did you mean small_cnn"),
    ({"factory": "tests.external_models:NOT_CALLABLE"}, r"not callable \(int\)"),
    ({"factory": "torch.nn:Linear", "factory_kwargs": {"in_features": 784, "out_features": 10}},
     r"fails on mnist inputs of shape \[2, 1, 28, 28\]: RuntimeError"),
    ({"factory": "torch.nn:Linear", "factory_kwargs": {"in_features": 28, "out_features": 10}},
     r"must return logits of shape \[batch, 10\] for mnist .* returned a tensor of shape "
     r"\[2, 1, 28, 10\]"),
    ({"factory": "torch.nn:Flatten"}, r"returned a tensor of shape \[2, 784\]"),
    ({"factory": "tests.external_models:Softmaxed"}, r"returns probabilities"),
    ({"factory": "torch.nn:Linear", "factory_kwargs": {"in_features": 3}},
     r"factory torch\.nn:Linear\(in_features=3\) failed: TypeError"),
    ({"factory": FACTORY, "weights": "unfit"},
     r"does not fit the model: missing 1: 0\.bias; unexpected 1: head\.weight; "
     r"wrong shape 1: 4\.weight \[10, 5\] vs model \[10, 196\]"),
    ({"factory": FACTORY, "weights": "pickled"}, r"weights_only=True\) refused it"),
    ({"factory": FACTORY, "weights": "no_tensors"}, r"no state dict found .* holds \['epoch', 'notes'\]"),
    ({"factory": FACTORY, "weights": "missing.pt"}, r"missing\.pt does not exist"),
    ({"torchscript": "not_script"}, r"torch\.jit\.load cannot read it"),
    ({"factory": FACTORY, "mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]},
     r"mnist inputs have 1 channel\(s\): give 1 or 1"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_model_that_does_not_fit_is_a_clear_error(tmp_path, spec, match):
    spec = dict(spec)
    if spec.get("weights") in ("unfit", "pickled", "no_tensors"):
        spec["weights"] = str(_bad_weights(tmp_path, spec["weights"]))
    elif spec.get("weights"):
        spec["weights"] = str(tmp_path / spec["weights"])
    if spec.get("torchscript"):
        (tmp_path / "x.pt").write_bytes(b"not a zip")
        spec["torchscript"] = str(tmp_path / "x.pt")
    with pytest.raises(ExternalModelError, match=match):
        load_external(_spec(**spec), device=CPU)


@pytest.mark.parametrize(("spec", "match"), [
    ({"factory": FACTORY, "torchscript": "a.pt"}, "exactly one of factory, torchscript, robustbench"),
    ({}, "exactly one of .* got none"),
    ({"factory": "tests/external_models.py"}, "must be 'package.module:callable'"),
    ({"factory": FACTORY, "threat_model": "Linf"}, "'threat_model' does not apply to a factory"),
    ({"torchscript": "a.pt", "weights": "w.pt"}, "'weights' does not apply to a torchscript"),
    ({"robustbench": "Ding2020MMA"}, "needs threat_model: Linf or L2"),
    ({"robustbench": "Ding2020MMA", "threat_model": "Linf", "mean": [0.5], "std": [0.2]},
     "RobustBench models take \\[0, 1\\] inputs"),
    ({"robustbench": "Ding2020MMA", "threat_model": "Linf"},
     "dataset 'mnist': mpo evaluates RobustBench models of cifar10 only"),
    ({"factory": FACTORY, "mean": [0.5]}, "give mean and std together"),
    ({"factory": FACTORY, "mean": [0.5], "std": [0.0]}, "every std must be > 0"),
    ({"factory": FACTORY, "input_range": [255, 0]}, "upper end must be above"),
    ({"factory": FACTORY, "dataset": "imagenet"}, "field 'dataset' = 'imagenet'"),
])
def test_spec_validation_names_the_field(spec, match):
    with pytest.raises(ExternalModelError, match=match):
        parse_external({"dataset": "mnist", **spec}, source="test")


def test_logits_check_refuses_non_finite_outputs():
    class Nan(torch.nn.Module):
        def forward(self, x):
            return torch.full((len(x), 10), float("nan"))

    with pytest.raises(ExternalModelError, match="non-finite logits"):
        check_logits(Nan(), _spec(factory=FACTORY), CPU)


def test_external_model_of_another_dataset_is_refused(suite_file):
    from jobs.evaluation import load_model
    from jobs.suite import ConfigError, load_suite

    spec = parse_external({"factory": FACTORY, "dataset": "cifar10"}, source="test")
    with pytest.raises(ConfigError, match="is for dataset 'cifar10' but suite 'mnist-ext'"):
        load_model(spec, load_suite(suite_file), CPU)


# ----------------------------------------------------------------------------------------------
# RobustBench, from a local model folder in its layout (no download)

RB_NAME = "Ding2020MMA"  # the smallest CIFAR-10 Linf/L2 zoo entry: WRN-28-4, 5.8M parameters


@pytest.fixture(scope="module")
def robustbench_utils():
    from jobs.external.robustbench import _import_robustbench

    return _import_robustbench()  # robustbench is in the dev extra: a test never skips it


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory, robustbench_utils) -> Path:
    """A model folder with Ding2020MMA's architecture and random weights, saved as robustbench's
    own checkpoints are ({"state_dict": ...} at DIR/cifar10/Linf/NAME.pt)."""
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    zoo = robustbench_utils.all_models[BenchmarkDataset.cifar_10][ThreatModel.Linf]
    model = zoo[RB_NAME]["model"]()
    root = tmp_path_factory.mktemp("zoo")
    (root / "cifar10" / "Linf").mkdir(parents=True)
    torch.save({"state_dict": model.state_dict()}, root / "cifar10" / "Linf" / f"{RB_NAME}.pt")
    return root


def _rb(zoo: Path, name: str = RB_NAME) -> ExternalModel:
    return parse_external({"robustbench": name, "threat_model": "Linf", "dataset": "cifar10",
                           "model_dir": str(zoo)}, source="test")


def test_robustbench_model_end_to_end(tmp_path, zoo_dir, no_published_checksum):  # noqa: F811
    data = _write_cifar(tmp_path / "data", n=6)
    suite = tmp_path / "cifar-ext.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "cifar-ext", "dataset": "cifar10", "seed": 0, "n_test": 4,
        "groups": {"cifar-lp": {"families": ["linf", "l2"], "affine": []}},
        "attacks": [
            {"name": "linf-pgd", "kind": "first-order",
             "spec": {"type": "linf", "epsilon": 8 / 255, "k": 2}},
            {"name": "l2-pgd", "kind": "first-order", "spec": {"type": "l2", "epsilon": 0.5, "k": 2}},
        ],
    }))
    run = tmp_path / "run"
    _cli("eval", "--robustbench", RB_NAME, "--threat-model", "Linf", "--model-dir", str(zoo_dir),
         "--suite", str(suite), "--out", str(run), "--data-dir", str(data), "--n-test", "4")
    rows = _read_rows(run)
    digest = hashlib.sha256((zoo_dir / "cifar10" / "Linf" / f"{RB_NAME}.pt").read_bytes()).hexdigest()
    assert len(rows) == 8 and set(rows["model_label"]) == {RB_NAME}
    assert set(rows["checkpoint_digest"]) == {digest}
    (model_id,) = set(rows["model_id"])
    assert model_id.startswith("cifar10-external-ding2020mma-")
    record = json.loads((run / "manifest.json").read_text())["trials"][model_id]["config"]
    assert record["external"]["spec"]["threat_model"] == "Linf"
    _cli("export", str(run), "--format", "json")
    info = json.loads((run / "export" / "model_info" / "cifar10" / "cifar-lp" /
                       f"{model_id}.json").read_text())
    assert info["eps"] == "8/255" and info["mpo_threat_model"] == "Linf"
    assert info["architecture"] == RB_NAME


def test_robustbench_id_is_the_zoo_entry_and_file_digest_recorded(tmp_path, zoo_dir):
    copy = tmp_path / "copy"
    shutil.copytree(zoo_dir, copy)
    a, b = load_external(_rb(zoo_dir), device=CPU), load_external(_rb(copy), device=CPU)
    assert a.model_id == b.model_id and a.weights_digest == b.weights_digest != ""


def test_robustbench_never_unpickles(tmp_path, zoo_dir, robustbench_utils):
    bad = tmp_path / "bad"
    shutil.copytree(zoo_dir, bad)
    path = bad / "cifar10" / "Linf" / f"{RB_NAME}.pt"
    torch.save({"state_dict": torch.load(path, weights_only=True)["state_dict"],
                "hook": _Evil()}, path)
    with pytest.raises(ExternalModelError, match=r"did not load from .*weights_only=True\) refused"):
        load_external(_rb(bad), device=CPU)
    assert robustbench_utils.torch is torch  # the weights_only stand-in was for the load only


@pytest.mark.parametrize(("name", "files", "match"), [
    (RB_NAME, False, r"Ding2020MMA\.pt not found; put the checkpoint there .* or add --download"),
    ("Ding2020MM", True, r"not in the zoo for cifar10 Linf .*did you mean Ding2020MMA"),
    ("Debenedetti2022Light_XCiT-S12", True, "loaded by timm from the Hugging Face hub"),
])
def test_robustbench_errors(tmp_path, zoo_dir, name, files, match):
    folder = zoo_dir if files else tmp_path
    with pytest.raises(ExternalModelError, match=match):
        load_external(_rb(folder, name), device=CPU)


def test_robustbench_overwritten_by_torchattacks_is_named(tmp_path, robustbench_utils):
    """torchattacks 3.5.1 ships an old robustbench copy: a utils.py that is not the file the
    installed release recorded is refused with the repair command; the real one passes."""
    from jobs.external.robustbench import MpoError, _check_not_overwritten

    real = Path(robustbench_utils.__file__)
    _check_not_overwritten(real)
    old = tmp_path / "utils.py"
    old.write_bytes(real.read_bytes().replace(b"import timm\n", b""))
    with pytest.raises(MpoError, match=r"overwritten .*torchattacks 3\.5\.1 .*"
                       r"pip install --force-reinstall --no-deps robustbench"):
        _check_not_overwritten(old)


def test_robustbench_missing_names_the_extra(monkeypatch):
    import sys

    from jobs.external.robustbench import MpoError, _import_robustbench

    monkeypatch.setitem(sys.modules, "robustbench.utils", None)
    with pytest.raises(MpoError, match=r"pip install 'mpo\[robustbench\]'"):
        _import_robustbench()


# ----------------------------------------------------------------------------------------------
# Grids: evaluation-only entries


GRID = {
    "name": "ext-test",
    "seeds": [0],
    "evaluation": {"mnist": {"suite": "SUITE", "n_test": 20, "shard_size": 10}},
    "experiments": {"lp": {
        "families": ["linf", "l2"],
        "train": {"dataset": {"name": "mnist", "n_train": 200}, "model": {"name": "mnist_cnn_small"},
                  "optimizer": {"name": "adam", "lr": 0.001}, "epochs": 1, "batch_size": 100},
        "attacks": {},
        "models": {"Nat": {"strategy": "nat"}},
    }},
    "external": {"Theirs": {"factory": FACTORY, "weights": "WEIGHTS", "dataset": "mnist",
                            "groups": ["lp"]}},
}


def _grid(tmp_path: Path, suite_file: Path, weights: Path, change=None) -> Path:
    grid = json.loads(json.dumps(GRID).replace("SUITE", str(suite_file))
                      .replace("WEIGHTS", str(weights)))
    if change:
        change(grid)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_grid_expands_external_entries(tmp_path, suite_file, weights):
    from orchestrator.plan import load_plan

    plan, _, _ = load_plan(_grid(tmp_path, suite_file, weights))
    (ext,) = [t for t in plan.trials.values() if t.strategy == "external"]
    assert ext.label == "Theirs" and ext.groups == ["lp"] and ext.attacks == ["linf-pgd", "l2-pgd"]
    assert ext.config["external"]["spec"]["weights"] == str(weights)
    assert ext.model_id in plan.groups["lp"].models and len(plan.trial_shards(ext.model_id)) == 4
    same = load_external(parse_external(ext.config["external"]["spec"], source="t"), device=CPU)
    assert same.model_id == ext.model_id


@pytest.mark.parametrize(("change", "match"), [
    (lambda g: g["external"]["Theirs"].update(groups=["cifar-lp"]), "unknown group 'cifar-lp'"),
    (lambda g: g["external"]["Theirs"].update(dataset="cifar10"),
     "dataset 'cifar10' but group 'lp' is on 'mnist'"),
    (lambda g: g["external"].update(Nat=g["external"].pop("Theirs")), "already has a trained model"),
    (lambda g: g["external"]["Theirs"].update(weights="/no/such.pt"), "/no/such.pt does not exist"),
    (lambda g: g["external"]["Theirs"].update(colour="red"),
     "field 'external.Theirs.colour': unknown field"),
])
def test_grid_external_errors(tmp_path, suite_file, weights, change, match):
    from orchestrator.grid import GridError
    from orchestrator.plan import load_plan

    with pytest.raises(GridError, match=match):
        load_plan(_grid(tmp_path, suite_file, weights, change))


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_evaluates_an_external_model_beside_a_trained_one(ray_cluster, tmp_path, suite_file,
                                                                  weights, mnist_dir):
    grid = _grid(tmp_path, suite_file, weights)
    _cli("sweep", str(grid), "--storage", str(tmp_path / "runs"), "--name", "ext",
         "--data-dir", str(mnist_dir), "--cpus-per-trial", "0.5", "--eval-workers", "1",
         "--cpus-per-eval-worker", "0.5")
    run = tmp_path / "runs" / "ext"
    rows = _read_rows(run)
    assert set(rows["model_label"]) == {"Nat", "Theirs"} and len(rows) == 2 * 2 * 20
    ext_id = rows.loc[rows["model_label"] == "Theirs", "model_id"].iloc[0]
    trial = run / "trials" / ext_id
    assert not (trial / "checkpoint.pt").exists()  # nothing trained
    assert json.loads((trial / "trial.json").read_text())["state"] == "done"
    _cli("report", str(run), "--quiet")
    table = (run / "report" / "report.md").read_text()
    assert "| Nat | 20 |" in table and "| Theirs | 20 |" in table
