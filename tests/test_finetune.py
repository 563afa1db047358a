"""Starting from a model (no Ray): each kind of starting point loads its weights (an mpo
checkpoint, a grid parent's checkpoint, a factory with weights, a TorchScript file, a RobustBench
entry trained in its own architecture), fractional epochs, the model id that hashes the parent
and not its path, every refusal's message, model soups (weights (1, 0) give exactly the first
ingredient's outputs), the cost that counts the ancestors once, the grid's lineage checks
(unknown parents, cycles, architectures, datasets) and the schedule that runs children after
their parents and never after a failed one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from jobs.checkpoint import load_checkpoint
from jobs.config import make_train_config
from jobs.errors import ConfigError
from jobs.finetune import initial_weights, resolve_init
from jobs.soup import average, make_soup, soup_weights
from jobs.training import load_trained, train
from orchestrator.grid import GridError, parse_grid
from orchestrator.lineage import Schedule, lineage_tree
from orchestrator.plan import expand_grid, load_plan
from tests.test_data import no_published_checksum  # noqa: F401 (a fixture)
from tests.test_external import robustbench_utils, zoo_dir  # noqa: F401 (fixtures)

TOY = {"label": "P", "dataset": {"name": "toy", "params": {"n_train": 400, "n_test": 100}},
       "model": {"name": "linear"}, "strategy": "single",
       "attacks": [{"type": "linf", "epsilon": 0.4, "k": 3}], "epochs": 1, "batch_size": 100}


def _toy(**changes):
    return make_train_config({**TOY, **changes})


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A toy Adv_inf trained one epoch; its checkpoint."""
    out = tmp_path_factory.mktemp("parent") / "p"
    return train(TOY, out).checkpoint


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


# ----------------------------------------------------------------------------------------------
# Configs


def test_fractional_epochs_train_that_share_of_the_steps(tmp_path):
    cfg = _toy(epochs=0.5)  # 400 points, batch 100: 4 steps an epoch, so 2
    result = train(cfg, tmp_path / "half")
    assert [m["step"] for m in result.metrics] == [2]
    assert _toy(epochs=1.0).to_dict()["epochs"] == 1  # integral floats keep the old id
    assert _toy(epochs=1.0).model_id() == _toy(epochs=1).model_id()
    assert "init" not in _toy().to_dict()  # a config from scratch is written as before
    with pytest.raises(ConfigError, match="epochs"):
        _toy(epochs=0)


def test_a_child_starts_from_its_parents_weights(tmp_path, parent):
    # a learning rate of 1e-12 leaves the weights where they started: the parent's
    child = resolve_init(_toy(label="C", optimizer={"lr": 1e-12},
                              init={"checkpoint": str(parent)}))
    out = train(child, tmp_path / "c").checkpoint
    for k, v in _weights(parent).items():
        assert torch.allclose(_weights(out)[k], v, atol=1e-9)
    scratch = train(_toy(label="S", optimizer={"lr": 1e-12}, seed=5), tmp_path / "s").checkpoint
    assert not torch.allclose(_weights(scratch)["fc.weight"], _weights(parent)["fc.weight"])
    # the cost counts the parent once beside the child's own
    cost = load_checkpoint(out)["extra"]["cost"]
    pid = child.init.parent
    assert set(cost["lineage"]) == {pid, child.model_id()}
    parent_passes = cost["lineage"][pid]["passes"]
    assert cost["with_ancestors"]["passes"] == pytest.approx(
        parent_passes + cost["lineage"][child.model_id()]["passes"])
    assert cost["examples"] == 400 and parent_passes > 0


def test_model_id_hashes_the_parent_not_its_path(tmp_path, parent):
    moved = tmp_path / "elsewhere" / "checkpoint.pt"
    moved.parent.mkdir()
    shutil.copy(parent, moved)
    a = resolve_init(_toy(init={"checkpoint": str(parent)}))
    b = resolve_init(_toy(init={"checkpoint": str(moved.parent)}))  # the folder works too
    assert a.model_id() == b.model_id() != _toy().model_id()
    other = train(_toy(seed=3), tmp_path / "other").checkpoint
    c = resolve_init(_toy(init={"checkpoint": str(other)}))
    assert c.model_id() != a.model_id()  # the same recipe from another parent


@pytest.mark.parametrize(("init", "model", "message"), [
    ({"checkpoint": "nowhere.pt"}, None, "init.checkpoint = 'nowhere.pt': no such file"),
    ({"model": "Adv_inf"}, None, "init.model = 'Adv_inf' names a model of a grid"),
    ({"checkpoint": "PARENT"}, {"name": "mlp"}, "the parent checkpoint .* is a 'linear', the "
                                                 "child a 'mlp': the architectures must be"),
])
def test_refusals_name_both_sides(init, model, message, parent):
    if init.get("checkpoint") == "PARENT":
        init = {"checkpoint": str(parent)}
    cfg = _toy(init=init, **({"model": model} if model else {}))
    with pytest.raises(ConfigError, match=message):
        resolve_init(cfg)


def test_parent_of_another_dataset_is_refused(parent):
    cfg = _toy(dataset={"name": "toy", "params": {"n_train": 400, "d": 50}},
               init={"checkpoint": str(parent)})
    with pytest.raises(ConfigError, match=r"parent checkpoint .* dataset 'toy' \{.*\}, the child "
                                          r"trains on 'toy' \{.*'d': 50"):
        resolve_init(cfg)


def test_init_form_is_validated():
    with pytest.raises(ConfigError, match="exactly one starting point"):
        _toy(init={"checkpoint": "a.pt", "model": "B"})
    with pytest.raises(ConfigError, match=r"model\.name 'init' means the architecture of an "
                                          r"external starting point"):
        _toy(model={"name": "init"})


# ----------------------------------------------------------------------------------------------
# External starting points (MNIST: a factory with weights, TorchScript; CIFAR10: RobustBench)


MNIST_FT = {"label": "FT", "dataset": {"name": "mnist", "n_train": 100},
            "model": {"name": "mnist_cnn_small"}, "strategy": "single",
            "attacks": [{"type": "linf", "epsilon": 0.3, "k": 2}], "epochs": 0.5, "batch_size": 50,
            "optimizer": {"lr": 1e-12}}


@pytest.fixture(scope="module")
def mpo_weights(tmp_path_factory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """mnist_cnn_small's weights from a factory: a state dict file and a TorchScript file."""
    from tests.external_models import mpo_mnist_small

    model = mpo_mnist_small().eval()
    root = tmp_path_factory.mktemp("ext")
    torch.save({"state_dict": model.state_dict()}, root / "w.pt")
    torch.jit.script(model).save(str(root / "net.pt"))
    return root / "w.pt", root / "net.pt", model.state_dict()


@pytest.mark.parametrize("kind", ["factory", "torchscript"])
def test_external_starting_points_load_and_train(kind, tmp_path, mnist_dir, mpo_weights):
    weights, script, state = mpo_weights
    ext = ({"factory": "tests.external_models:mpo_mnist_small", "weights": str(weights)}
           if kind == "factory" else {"torchscript": str(script)})
    cfg = resolve_init(make_train_config({**MNIST_FT, "init": {"external": {**ext,
                                                                             "dataset": "mnist"}}}))
    assert cfg.init.parent.startswith("mnist-external-") and cfg.init.digest
    loaded, _ = initial_weights(cfg, tmp_path)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    out = train(cfg, tmp_path / "ft", data_dir=mnist_dir).checkpoint  # lr 1e-12: stays put
    assert all(torch.allclose(_weights(out)[k], v, atol=1e-9) for k, v in state.items())
    cost = load_checkpoint(out)["extra"]["cost"]
    assert cfg.init.parent in cost["lineage"]  # an external parent: counted, its cost unknown


def test_external_starting_point_of_another_architecture_is_refused(mpo_weights):
    weights, _, _ = mpo_weights
    cfg = make_train_config({**MNIST_FT, "model": {"name": "mnist_cnn"}, "init": {"external": {
        "factory": "tests.external_models:mpo_mnist_small", "weights": str(weights),
        "dataset": "mnist"}}})
    with pytest.raises(ConfigError, match=r"the weights of the parent factory model "
                                          r"tests.external_models:mpo_mnist_small does not fit the "
                                          r"model: .*wrong shape.*the child's model: 'mnist_cnn'"):
        resolve_init(cfg)


def test_robustbench_entry_trains_in_its_own_architecture(
        tmp_path, zoo_dir, no_published_checksum):  # noqa: F811 (fixtures)
    from tests.test_data import _write_cifar
    from tests.test_external import RB_NAME

    data = _write_cifar(tmp_path / "data", n=4)
    ext = {"robustbench": RB_NAME, "threat_model": "Linf", "dataset": "cifar10",
           "model_dir": str(zoo_dir)}
    cfg = resolve_init(make_train_config({
        "label": "RB_ft", "dataset": {"name": "cifar10", "n_train": 4}, "model": {"name": "init"},
        "strategy": "nat", "epochs": 0.5, "batch_size": 2, "augment": False,
        "optimizer": {"name": "sgd", "lr": 1e-3}, "init": {"external": ext}}))
    out = train(cfg, tmp_path / "rb", data_dir=data).checkpoint
    zoo = torch.load(zoo_dir / "cifar10" / "Linf" / f"{RB_NAME}.pt", weights_only=True)["state_dict"]
    mine = _weights(out)
    moved = [k for k, v in zoo.items() if not torch.equal(mine[f"model.{k}"], v)]
    assert moved and len(moved) < len(zoo) + 1  # it trained, from the zoo's weights
    model, _, _ = load_trained(out)  # and its checkpoint loads in that architecture
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


# ----------------------------------------------------------------------------------------------
# Soups


def test_soup_weights_along_the_line_and_simplex():
    assert soup_weights(2, 5) == [(0.75, 0.25), (0.5, 0.5), (0.25, 0.75)]
    tri = soup_weights(3, 3)
    assert len(tri) == 3 and all(abs(sum(w) - 1) < 1e-12 and max(w) < 1 for w in tri)
    with pytest.raises(ConfigError, match="need at least 2 ingredients and 3 points"):
        soup_weights(2, 2)


def test_soup_at_one_zero_is_exactly_the_first_ingredient(tmp_path, parent):
    other = train(_toy(label="Q", seed=4), tmp_path / "q").checkpoint
    path, record = make_soup([parent, other], [1.0, 0.0], tmp_path / "soup.pt", family="S")
    a, _, _ = load_trained(parent)
    s, _, _ = load_trained(path)
    x = torch.randn(64, *_toy().dataset_info().input_shape)
    assert torch.equal(a(x), s(x))
    half, _ = make_soup([parent, other], [0.5, 0.5], tmp_path / "half.pt", family="S")
    wa, wb, wh = _weights(parent), _weights(other), _weights(half)
    assert all(torch.allclose(wh[k], (wa[k] + wb[k]) / 2) for k in wa)
    assert record["label"] == "S(1,0)" and record["strategy"] == "soup"
    # its cost: nothing of its own; the ingredients' lineages
    cost = load_checkpoint(path)["extra"]["cost"]
    assert cost["fwd_per_example"] == 0 and len(cost["lineage"]) == 2


def test_soup_counts_a_shared_ancestor_once(tmp_path, parent):
    kids = [train(resolve_init(_toy(label=f"K{i}", seed=i, init={"checkpoint": str(parent)})),
                  tmp_path / f"k{i}").checkpoint for i in (1, 2)]
    path, _ = make_soup(kids, [0.5, 0.5], tmp_path / "soup.pt", family="S")
    cost = load_checkpoint(path)["extra"]["cost"]
    assert len(cost["lineage"]) == 3  # the parent once, each child once
    assert cost["with_ancestors"]["passes"] == pytest.approx(
        sum(v["passes"] for v in cost["lineage"].values()))


def test_soup_of_two_architectures_is_refused(tmp_path, parent):
    mlp = train(_toy(label="M", model={"name": "mlp"}), tmp_path / "m").checkpoint
    with pytest.raises(ConfigError, match="ingredient M is a 'mlp' on 'toy', P a 'linear' on "
                                          "'toy': a soup needs one architecture"):
        make_soup([parent, mlp], [0.5, 0.5], tmp_path / "x.pt", family="S")
    with pytest.raises(ConfigError, match="tensors differ"):
        average([{"a": torch.zeros(2)}, {"a": torch.zeros(3)}], [0.5, 0.5], names=["A", "B"])


# ----------------------------------------------------------------------------------------------
# Grids: lineage, refusals, the tree


def _grid(models: dict, soups: dict | None = None, extra: dict | None = None) -> dict:
    exp = {"families": ["linf", "l1"], "train": {
        "dataset": {"name": "toy"}, "model": {"name": "linear"}, "epochs": 1, "batch_size": 100},
        "attacks": {"linf": {"type": "linf", "epsilon": 0.4, "k": 3},
                    "l1": {"type": "l1", "epsilon": 2.0, "k": 3}},
        "models": models, **({"soups": soups} if soups else {})}
    return {"name": "g", "evaluation": {"toy": {"suite": "toy", "n_test": 10, "shard_size": 10}},
            "experiments": {"toy": exp, **(extra or {})}}


@pytest.mark.parametrize(("models", "soups", "message"), [
    ({"A": {"strategy": "nat", "init": "Z"}}, None,
     "experiments.toy.models.A.init: unknown parent 'Z' .*experiment 'toy' has models A"),
    ({"A": {"strategy": "nat", "init": "B"}, "B": {"strategy": "nat", "init": "A"}}, None,
     r"a cycle: toy/A -> toy/B -> toy/A"),
    ({"A": {"strategy": "nat"}}, {"S": {"models": ["A", "Q"], "points": 3}},
     "soups.S.models: unknown model 'Q'"),
    ({"A": {"strategy": "nat"}, "B": {"strategy": "nat"}},
     {"S": {"models": ["A", "B"], "weights": [[0.5, 0.6]]}}, "need 2 non-negative weights"),
    ({"A": {"strategy": "nat"}, "B": {"strategy": "nat"}},
     {"S": {"models": ["A", "B"]}}, "give weights: .* or points:"),
    ({"A": {"strategy": "nat", "train": {"seed": 3}}}, None, "'seed' is set per model by the grid"),
])
def test_grid_lineage_refusals(models, soups, message):
    with pytest.raises(GridError, match=message):
        parse_grid(_grid(models, soups), source="g.yaml")


def test_grid_child_of_another_architecture_or_dataset_is_refused():
    grid = parse_grid(_grid({"A": {"strategy": "nat"},
                             "B": {"strategy": "nat", "init": "A", "train": {"model": {"name": "mlp"}}}}),
                      source="g.yaml")
    with pytest.raises(GridError, match=r"models.B \(seed 0\): init: the parent 'A' "
                                        r"\(experiments.toy\) is a 'linear', the child a 'mlp'"):
        expand_grid(grid, source="g.yaml")
    other = {"families": ["linf"], "train": {"dataset": {"name": "toy", "params": {"d": 20}},
                                             "model": {"name": "linear"}, "epochs": 1,
                                             "batch_size": 10},
             "models": {"C": {"strategy": "nat", "init": "toy/A"}}}
    grid = parse_grid(_grid({"A": {"strategy": "nat"}}, extra={"toy2": other}), source="g.yaml")
    with pytest.raises(GridError, match=r"parent 'A' \(experiments.toy\) is a model of dataset "
                                        r"'toy', the child trains on 'toy' \{'d': 20\}"):
        expand_grid(grid, source="g.yaml")


def test_grid_soup_of_two_architectures_is_refused():
    grid = parse_grid(_grid({"A": {"strategy": "nat"},
                             "B": {"strategy": "nat", "train": {"model": {"name": "mlp"}}}},
                            {"S": {"models": ["A", "B"], "points": 3}}), source="g.yaml")
    with pytest.raises(GridError, match=r"soups.S: ingredient 'B' has model \{'name': 'mlp'.*"
                                        r"'A' has \{'name': 'linear'.*share one architecture"):
        expand_grid(grid, source="g.yaml")


def test_shipped_grids_show_the_new_models_and_their_parents():
    plan, _, _ = load_plan("toy-finetune")
    by_label = {t.label: (m, t) for m, t in plan.trials.items()}
    adv = by_label["Adv_inf"][0]
    for label in ("FT_eat", "FT_inf", "FT_1"):
        assert by_label[label][1].parents == [adv]
        assert by_label[label][1].config["init"]["parent"] == adv
    soups = [t for t in plan.trials.values() if t.strategy == "soup"]
    assert [t.config["soup"]["weights"] for t in soups] == [[0.75, 0.25], [0.5, 0.5], [0.25, 0.75]]
    assert all(t.parents == [by_label["FT_inf"][0], by_label["FT_1"][0]] for t in soups)
    tree = lineage_tree({m: (t.label, t.parents) for m, t in plan.trials.items()}, title="t")
    assert tree is not None and tree.children[0].label.startswith("Adv_inf")
    for name in ("paper-grid", "mnist-mini"):
        plan, _, _ = load_plan(name)
        eat = [t for t in plan.trials.values() if t.label == "FT_eat"]
        assert eat and all(t.parents and plan.trials[t.parents[0]].label == "Adv_inf" for t in eat)
        assert any(t.strategy == "soup" for t in plan.trials.values())


def test_grid_yaml_round_trip_keeps_ids(tmp_path):
    """The same grid read twice (a resume) gives the same ids; a parent's change moves its
    children's ids."""
    data = _grid({"A": {"strategy": "nat"}, "B": {"strategy": "nat", "init": "A"}})
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(data))
    a = list(load_plan(path)[0].trials)
    assert a == list(load_plan(path)[0].trials)
    data["experiments"]["toy"]["models"]["A"]["train"] = {"epochs": 2}
    path.write_text(yaml.safe_dump(data))
    b = list(load_plan(path)[0].trials)
    assert a[0] != b[0] and a[1] != b[1]


# ----------------------------------------------------------------------------------------------
# The schedule


def test_schedule_runs_children_after_parents_and_blocks_after_a_failure():
    parents = {"a": [], "b": ["a"], "c": ["b"], "d": [], "s": ["b", "d"]}
    s = Schedule(["a", "b", "c", "d", "s"], parents, {m: m.upper() for m in parents})
    assert s.next_ready() == "a" and s.next_ready() == "d"  # independent work side by side
    assert s.next_ready() is None and not s.finished()  # b waits for a, holding nothing
    s.complete("d")
    assert s.next_ready() is None
    assert s.complete("a", error="boom") == ["b", "c", "s"]  # descendants, transitively
    assert "its parent 'A' (a) failed: boom" in s.blocked["b"]
    assert "its parent 'B' (b) did not run" in s.blocked["c"]
    assert s.finished() and s.next_ready() is None


def test_schedule_after_a_resume_counts_what_is_on_disk():
    s = Schedule(["b"], {"a": [], "b": ["a"]}, {}, done={"a"})
    assert s.next_ready() == "b"
    s = Schedule(["b"], {"a": [], "b": ["a"]}, {})  # a parent neither done nor to run
    assert "neither trained nor scheduled" in s.blocked["b"] and s.finished()


def test_soup_command(tmp_path, parent):
    from click.testing import CliRunner

    from orchestrator.cli import main

    other = train(_toy(label="Q", seed=4), tmp_path / "q").checkpoint
    out = tmp_path / "soup.pt"
    ok = CliRunner().invoke(main, ["soup", str(parent), str(other.parent), "--weights", "0.5,0.5",
                                   "--out", str(out), "--name", "PQ"])
    assert ok.exit_code == 0, ok.output
    record = load_checkpoint(out)["extra"]["soup"]
    assert record["label"] == "PQ(0.5,0.5)" and record["soup"]["model_id"] in ok.output
    bad = CliRunner().invoke(main, ["soup", str(parent), str(other), "--weights", "0.5,0.6",
                                    "--out", str(tmp_path / "x.pt")])
    assert bad.exit_code == 1 and "need 2 non-negative weights" in bad.output
    assert "Traceback" not in bad.output
