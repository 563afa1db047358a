"""Training configs, strategies and the resumable training loop (tiny models, CPU, seconds)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from jobs.config import (
    RECIPES,
    ConfigError,
    TrainConfig,
    load_train_config,
    make_train_config,
    scale_spec,
)
from jobs.strategy_table import STRATEGIES
from jobs.training import (
    MpoError,
    learning_rate,
    load_trained,
    train,
    training_attacks,
)

EPS_INF = 0.4020151261036849


def toy_config(**changes) -> TrainConfig:
    base = {
        "label": "Adv_max",
        "dataset": {"name": "toy", "params": {"n_train": 300, "n_test": 200}},
        "model": {"name": "linear"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "strategy": "max",
        "attacks": [
            {"type": "linf", "epsilon": EPS_INF, "k": 3},
            {"type": "l1", "epsilon": 2.0, "k": 3},
        ],
        "epochs": 3,
        "batch_size": 50,
        "seed": 0,
    }
    base.update(changes)
    return make_train_config(base)


def mnist_config(strategy: str, attacks: list[dict], **changes) -> TrainConfig:
    base = {
        "label": f"mnist-{strategy}",
        "dataset": {"name": "mnist", "n_train": 200},
        "model": {"name": "mnist_cnn_small"},
        "optimizer": {"name": "adam", "lr": 2e-3},
        "strategy": strategy,
        "attacks": attacks,
        "epochs": 1,
        "steps_per_epoch": 2,
        "batch_size": 16,
        "seed": 0,
    }
    base.update(changes)
    return make_train_config(base)


LINF = {"type": "linf", "epsilon": 0.3, "k": 2}
L1 = {"type": "l1", "epsilon": 10.0, "k": 2}
L2 = {"type": "l2", "epsilon": 2.0, "k": 2}
RT = {"type": "rt", "spatial_limits": [3, 3, 30], "random_tries": 2}


# ----------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"strategy": "minmax"},
         r"field 'strategy' = 'minmax'.*" + re.escape(
             ", ".join(f"'{n}'" for n in list(STRATEGIES)[:-1]) + f" or '{list(STRATEGIES)[-1]}'")),
        ({"strategy": "avg", "attacks": []}, r"strategy 'avg' needs at least one attack"),
        ({"strategy": "max", "attacks": []}, r"strategy 'max' needs at least one attack"),
        ({"strategy": "single"}, r"strategy 'single' needs exactly one attack, got 2"),
        ({"strategy": "nat"}, r"strategy 'nat' .* takes no attacks"),
        ({"strategy": "eat", "attacks": [{"type": "linf", "epsilon": 0.3}]},
         r"strategy 'eat' .*one attack drawn from several: it needs at least 2 attacks, got 1 "
         r"\(with one attack, use strategy 'single'\)"),
        ({"strategy": "random", "attacks": []}, r"strategy 'random' .*needs at least 2 attacks, got 0"),
        ({"epochs": 0}, r"field 'epochs' = 0"),
        ({"optimizer": {"name": "rmsprop"}}, r"field 'optimizer.name' = 'rmsprop'"),
        ({"optimizer": {"milestones": [0.5, 1.5]}}, r"field 'optimizer.milestones'.*1.5"),
        ({"model": {"name": "resnet"}}, r"unknown model 'resnet'; valid models"),
        ({"dataset": {"name": "imagenet"}}, r"unknown dataset 'imagenet'"),
        ({"bogus": 1}, r"field 'bogus': unknown field; allowed fields: label, dataset, model"),
        ({"attacks": [{"type": "linf", "epsilon": -1}]}, r"attacks\[0\].*'epsilon'"),
        ({"augment": True}, r"augment: dataset 'toy' has no training augmentation"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_bad_config_is_a_clear_error(changes, match):
    with pytest.raises(ConfigError, match=match):
        toy_config(**changes)


def test_spec_error_in_config_file_names_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "dataset: {name: toy}\nmodel: {name: linear}\nstrategy: avg\nepochs: 1\nbatch_size: 10\n"
        "attacks:\n  - {type: linf, epsilon: 0.3}\n  - {type: l1, epsilon: 2.0, kk: 3}\n"
    )
    with pytest.raises(ConfigError, match=r"bad\.yaml.*attacks\[1\].*'kk'"):
        load_train_config(path)


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_train_config(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("strategy: [max\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_train_config(bad)


def test_recipes_validate_and_follow_the_paper():
    assert {"mnist-paper", "cifar10-paper", "toy", "mnist-small"} <= set(RECIPES)
    mnist, cifar = RECIPES["mnist-paper"], RECIPES["cifar10-paper"]
    assert (mnist.optimizer.name, mnist.optimizer.lr, mnist.optimizer.milestones) == ("adam", 1e-3, [0.5])
    assert mnist.batch_size == 100 and mnist.start_small and mnist.families() == ["linf", "l1", "l2"]
    assert (cifar.optimizer.name, cifar.optimizer.momentum, cifar.optimizer.weight_decay) == ("sgd", 0.9, 2e-4)
    assert cifar.optimizer.milestones == [0.5, 0.75] and cifar.batch_size == 128 and cifar.augment


def test_model_id_is_stable_ignores_label_and_tracks_content():
    a, b = toy_config(), toy_config(label="other name")
    assert a.model_id() == b.model_id()
    assert a.model_id().startswith("toy-max-linf_l1-")
    assert toy_config(seed=1).model_id() != a.model_id()
    # specs are stored normalised: defaults made explicit, so equal attacks hash equally
    explicit = dict(a.attacks[0])
    assert toy_config(attacks=[explicit, a.attacks[1]]).model_id() == a.model_id()
    assert make_train_config(json.loads(json.dumps(a.to_dict()))) == a


def test_replace_revalidates():
    cfg = toy_config()
    single = cfg.replace(label="Adv_inf", strategy="single", attacks=[cfg.attacks[0]])
    assert single.strategy == "single" and single.families() == ["linf"]
    assert cfg.replace(optimizer={"lr": 0.5}).optimizer.name == "adam"
    with pytest.raises(ConfigError, match="exactly one attack"):
        cfg.replace(strategy="single")


@pytest.mark.parametrize(
    ("spec", "key", "expected"),
    [
        ({"type": "linf", "epsilon": 0.3, "a": 0.03}, "epsilon", 0.1),
        ({"type": "linf", "epsilon": 0.3, "a": 0.03}, "a", 0.01),
        ({"type": "rt", "spatial_limits": [3, 3, 30]}, "spatial_limits", [1.0, 1.0, 10.0]),
    ],
)
def test_scale_spec(spec, key, expected):
    out = scale_spec(spec, 1 / 3)
    assert out[key] == pytest.approx(expected)
    affine = scale_spec(
        {"type": "affine", "attacks": [{"type": "linf", "epsilon": 0.3}, {"type": "l1", "epsilon": 9.0}]},
        1 / 3,
    )
    assert affine["attacks"][1]["epsilon"] == pytest.approx(3.0)


def test_learning_rate_schedule():
    cfg = toy_config(optimizer={"name": "sgd", "lr": 0.1, "milestones": [0.5, 0.75]})
    assert [learning_rate(cfg, s, 100) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )


# ----------------------------------------------------------------------------------------------
# Training end to end


TOY_ATTACKS = [{"type": "linf", "epsilon": EPS_INF, "k": 3}, {"type": "l1", "epsilon": 2.0, "k": 3}]
STRATEGY_CASES = {
    "nat": [],
    "single": TOY_ATTACKS[:1],
    "avg": TOY_ATTACKS,
    "max": TOY_ATTACKS,
    "random": TOY_ATTACKS,
    "eat": TOY_ATTACKS,
}


@pytest.mark.parametrize("strategy", list(STRATEGY_CASES))
def test_each_strategy_trains_on_toy(tmp_path, strategy):
    cfg = toy_config(strategy=strategy, attacks=STRATEGY_CASES[strategy], epochs=2)
    seen = []
    result = train(cfg, tmp_path, on_epoch=seen.append)
    assert [m["epoch"] for m in seen] == [1, 2] == [m["epoch"] for m in result.metrics]
    last = result.metrics[-1]
    assert last["clean_acc"] > 0.75  # the sign feature alone gives 0.9
    assert result.metrics[-1]["train_loss"] < result.metrics[0]["train_loss"] + 0.05
    assert sorted(k for k in last if k.startswith("adv_acc/")) == sorted(
        f"adv_acc/{f}" for f in cfg.families()
    )
    for k in ("examples_per_s", "lr", "seconds"):
        assert last[k] > 0
    _, loaded_cfg, payload = load_trained(result.checkpoint)
    assert loaded_cfg == cfg and payload["extra"]["model_id"] == cfg.model_id()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert load_train_config(tmp_path / "config.json") == cfg


@pytest.mark.parametrize(
    ("strategy", "attacks"),
    [("nat", []), ("single", [RT]), ("avg", [LINF, L1, L2]), ("max", [LINF, RT]),
     ("random", [LINF, RT]), ("eat", [L1, RT])],
)
def test_each_strategy_trains_on_mnist_subset(tmp_path, mnist_dir, strategy, attacks):
    cfg = mnist_config(strategy, attacks)
    result = train(cfg, tmp_path, data_dir=mnist_dir)
    (m,) = result.metrics
    assert m["step"] == 2 and m["train_loss"] > 0 and 0 <= m["clean_acc"] <= 1
    assert len([k for k in m if k.startswith("adv_acc/")]) == len(attacks)
    assert result.checkpoint.exists()


def test_adversarial_training_beats_nat_on_its_attack(tmp_path):
    """On toy, Nat relies on the weak features and falls to l_inf (eps = 2 eta); Adv_inf does not."""
    from jobs.attacks import make_attack
    from jobs.data import load_split

    x, y = load_split("toy", "test", n=200, params={"n_train": 300, "n_test": 200})
    attack = make_attack(STRATEGY_CASES["single"][0], bounds=None)
    robust = {}
    for strategy in ("nat", "single"):
        cfg = toy_config(strategy=strategy, attacks=STRATEGY_CASES[strategy], epochs=4,
                         optimizer={"name": "adam", "lr": 0.05})
        model, _, _ = load_trained(train(cfg, tmp_path / strategy).checkpoint)
        res = attack(model, x, y, generator=torch.Generator().manual_seed(0))
        robust[strategy] = float((~res.success).float().mean())
    assert robust["nat"] < 0.2 and robust["single"] > 0.5


def test_start_small_divides_radii_by_3_in_the_first_epoch(tmp_path, monkeypatch):
    import jobs.training as training

    seen: list[tuple[int, float]] = []
    real = training.get_strategy

    def spy(name, *, seed):
        strategy = real(name, seed=seed)
        step = strategy.step

        def wrapped(model, x, y, attacks, *, generator=None):
            seen.append(tuple(float(a.epsilon) for a in attacks))
            return step(model, x, y, attacks, generator=generator)

        strategy.step = wrapped
        return strategy

    monkeypatch.setattr(training, "get_strategy", spy)
    cfg = toy_config(start_small=True, epochs=2, steps_per_epoch=2)
    result = train(cfg, tmp_path)
    assert seen[:2] == [pytest.approx((EPS_INF / 3, 2.0 / 3))] * 2
    assert seen[2:] == [pytest.approx((EPS_INF, 2.0))] * 2
    assert [m["start_small"] for m in result.metrics] == [True, False]
    rt = training_attacks(mnist_config("single", [RT]), factor=1 / 3)[0]
    assert rt.spec["spatial_limits"] == pytest.approx([1.0, 1.0, 10.0])


def _interrupt_after(epoch: int):
    class Stop(Exception):
        pass

    def hook(m):
        if m["epoch"] == epoch:
            raise Stop

    return Stop, hook


@pytest.mark.parametrize(
    ("strategy", "cut"), [*((s, 1) for s in STRATEGY_CASES), ("max", 2)], ids=str
)
def test_resume_equals_uninterrupted(tmp_path, strategy, cut):
    cfg = toy_config(strategy=strategy, attacks=STRATEGY_CASES[strategy], epochs=3,
                     steps_per_epoch=3, start_small=strategy != "nat")
    full = train(cfg, tmp_path / "full")
    stop, hook = _interrupt_after(cut)
    with pytest.raises(stop):
        train(cfg, tmp_path / "cut", on_epoch=hook)
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()
    resumed = train(cfg, tmp_path / "cut")
    assert resumed.resumed_from_epoch == cut
    a = torch.load(full.checkpoint, weights_only=True)["state_dict"]
    b = torch.load(resumed.checkpoint, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    timing = ("seconds", "examples_per_s", "train_seconds")
    strip = lambda ms: json.dumps([{k: v for k, v in m.items() if k not in timing} for m in ms])  # noqa: E731
    assert strip(full.metrics) == strip(resumed.metrics)  # as JSON: an unattacked family is NaN
    # a finished run is not trained again
    again = train(cfg, tmp_path / "cut")
    assert again.resumed_from_epoch == 3 and len(again.metrics) == 3


def test_resume_refuses_another_config(tmp_path):
    train(toy_config(epochs=1, steps_per_epoch=2), tmp_path)
    with pytest.raises(MpoError, match=r"different training config \(fields differ: seed\)"):
        train(toy_config(epochs=1, steps_per_epoch=2, seed=5), tmp_path)
    # a new label is the same training: it resumes
    assert train(toy_config(epochs=1, steps_per_epoch=2, label="x"), tmp_path).resumed_from_epoch == 1
    # resume=False starts over
    fresh = train(toy_config(epochs=1, steps_per_epoch=2, seed=5), tmp_path, resume=False)
    assert fresh.resumed_from_epoch == 0


def test_diverging_loss_names_epoch_and_step_and_keeps_last_state(tmp_path, monkeypatch):
    import jobs.training as training

    real = training.get_strategy
    calls = {"n": 0}

    def poisoned(name, *, seed):
        strategy = real(name, seed=seed)
        step = strategy.step

        def wrapped(model, x, y, attacks, *, generator=None):
            out = step(model, x, y, attacks, generator=generator)
            calls["n"] += 1
            if calls["n"] == 6:  # epoch 2, step 2 with 4 steps per epoch
                out.loss = out.loss * float("nan")
            return out

        strategy.step = wrapped
        return strategy

    monkeypatch.setattr(training, "get_strategy", poisoned)
    cfg = toy_config(epochs=3, steps_per_epoch=4)
    with pytest.raises(MpoError, match=r"loss = nan at epoch 2, step 2 of 4 .*after epoch 1"):
        train(cfg, tmp_path)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["extra"]["epoch"] == 1
    assert not (tmp_path / "checkpoint.pt").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_state_file_loads_with_weights_only(tmp_path):
    train(toy_config(epochs=1, steps_per_epoch=2), tmp_path)
    state = torch.load(Path(tmp_path) / "state.pt", weights_only=True)
    extra = state["extra"]
    assert {"optimizer", "epoch", "step", "rng", "metrics"} <= set(extra)
    assert {"data", "augment", "attack", "torch_cpu", "python"} <= set(extra["rng"])


HOST_READS = ("item", "__float__", "__int__", "__bool__", "tolist", "cpu", "numpy")


def test_training_steps_do_not_wait_for_the_device(tmp_path, monkeypatch):
    """The host reads tensors a fixed number of times per epoch, however many steps it has
    (nat: no attack whose own checks read tensors; SGD: Adam reads its CPU step counters)."""
    reads = {"n": 0}
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, **kwargs):
            reads["n"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    per_run = []
    for steps in (3, 12):
        cfg = toy_config(strategy="nat", attacks=[], epochs=1, steps_per_epoch=steps,
                         dataset={"name": "toy", "params": {"n_train": 1000, "n_test": 10}},
                         optimizer={"name": "sgd", "lr": 0.01})
        reads["n"] = 0
        train(cfg, tmp_path / str(steps), sync_every=100)
        per_run.append(reads["n"])
    assert per_run[0] == per_run[1] > 0


def test_on_step_runs_at_sync_points_with_the_mean_loss(tmp_path):
    seen = []
    train(toy_config(epochs=1, steps_per_epoch=5), tmp_path, on_step=seen.append, sync_every=2)
    assert [s["step"] for s in seen] == [2, 4, 5]
    assert all(s["steps_per_epoch"] == 5 and s["loss"] > 0 for s in seen)
    with pytest.raises(ValueError, match="sync_every = 0"):
        train(toy_config(epochs=1), tmp_path / "x", sync_every=0)
