"""foolbox and AutoAttack behind our Attack interface: strength, balls, seeds, RNG hygiene, specs,
unbounded inputs, reproducible evaluation rows, and a clear error when a library cannot be imported."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from jobs.attacks import AttackSpecError, make_attack, perturbation_norm
from jobs.errors import MpoError

N = 8
TOL = 1 + 1e-5

# One row per wrapped attack, with tiny budgets (CPU, seconds); the decision-based l_2 attacks get
# a wide radius because a few dozen steps leave them far from the boundary. Pointwise (784 pixel
# searches per input on MNIST) is exercised on the 100-feature toy data below.
SPECS = [
    {"type": "foolbox", "attack": "cw_l2", "epsilon": 2.0, "binary_search_steps": 2, "steps": 20,
     "stepsize": 0.05, "initial_const": 1.0},
    {"type": "foolbox", "attack": "ead_l1", "epsilon": 10.0, "binary_search_steps": 2, "steps": 20,
     "initial_stepsize": 0.05, "initial_const": 1.0, "decision_rule": "L1"},
    {"type": "foolbox", "attack": "fmn_linf", "epsilon": 0.3, "steps": 10},
    {"type": "foolbox", "attack": "fmn_l2", "epsilon": 2.0, "steps": 10},
    {"type": "foolbox", "attack": "fmn_l1", "epsilon": 10.0, "steps": 10},
    {"type": "foolbox", "attack": "boundary_l2", "epsilon": 8.0, "steps": 50, "init_steps": 20},
    {"type": "foolbox", "attack": "hsj_linf", "epsilon": 0.3, "steps": 2,
     "initial_gradient_eval_steps": 10, "max_gradient_eval_steps": 20, "init_steps": 20},
    {"type": "autoattack", "attack": "apgd-ce", "norm": "linf", "epsilon": 0.3, "n_iter": 10},
    {"type": "autoattack", "attack": "apgd-ce", "norm": "l1", "epsilon": 10.0, "n_iter": 10,
     "n_restarts": 1},
    {"type": "autoattack", "attack": "apgd-t", "norm": "l2", "epsilon": 2.0, "n_iter": 10,
     "n_target_classes": 2},
    {"type": "autoattack", "attack": "fab-t", "norm": "linf", "epsilon": 0.3, "n_iter": 10,
     "n_target_classes": 2},
    {"type": "autoattack", "attack": "square", "norm": "linf", "epsilon": 0.3, "n_queries": 50},
    {"type": "autoattack", "attack": "square", "norm": "l2", "epsilon": 2.0, "n_queries": 30},
    {"type": "autoattack", "attack": "square", "norm": "l1", "epsilon": 10.0, "n_queries": 30},
]


def spec_id(spec: dict) -> str:
    return f"{spec['type']}-{spec['attack']}-{spec.get('norm', '')}".rstrip("-")


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_attack_lowers_accuracy_respects_its_ball_and_reproduces(mnist_model, spec):
    model, x_all, y_all = mnist_model
    x, y = x_all[:N], y_all[:N]
    attack = make_attack(spec)
    assert attack.family in ("linf", "l2", "l1") and attack.epsilon == spec["epsilon"]
    assert attack.total_steps >= 1
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    model.train()
    result = attack(model, x, y, generator=torch.Generator().manual_seed(7))
    assert model.training  # mode restored
    model.eval()
    # the global generators are left as they were
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])

    # the reported norm is the true perturbation size; inputs stay in the box
    true = perturbation_norm(result.x_adv - x, attack.family)
    assert torch.allclose(result.norm, true, rtol=1e-5, atol=1e-6)
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
        clean = model(x).argmax(1) == y
    assert torch.equal(pred, result.pred) and torch.equal(result.success, pred != y)
    inside = result.norm <= attack.epsilon * TOL
    if attack.bounded:
        assert bool(inside.all())
    # lower accuracy after the in-ball rule (outside the ball = not fooled)
    robust = clean & ~(result.success & inside)
    assert int(robust.sum()) < int(clean.sum())

    again = attack(model, x, y, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again.x_adv, result.x_adv)


def test_unbounded_attacks_may_leave_the_ball_and_the_evaluation_discards_them(mnist_model):
    model, x_all, y_all = mnist_model
    x, y = x_all[:N], y_all[:N]
    # a radius too small for any input: C&W still reports what it found, at its true size
    attack = make_attack({"type": "foolbox", "attack": "cw_l2", "epsilon": 0.01,
                          "binary_search_steps": 2, "steps": 20, "stepsize": 0.05, "initial_const": 1.0})
    result = attack(model, x, y)
    assert bool(result.success.any()) and float(result.norm[result.success].min()) > 0.01


def test_unbounded_inputs_use_a_box_from_the_data():
    from jobs.data import dataset_info, load_split
    from jobs.models import build_model

    info = dataset_info("toy")
    torch.manual_seed(0)
    model = build_model("linear", info).eval()
    x, _ = load_split("toy", "test", n=16)
    y = model(x).argmax(1)  # every input correctly classified by construction
    for spec in ({"type": "autoattack", "attack": "square", "norm": "linf", "epsilon": 0.5,
                  "n_queries": 50},
                 {"type": "autoattack", "attack": "apgd-ce", "norm": "linf", "epsilon": 0.5, "n_iter": 5},
                 {"type": "foolbox", "attack": "pointwise_l1", "epsilon": 4.0, "init_steps": 50}):
        attack = make_attack(spec, bounds=None)
        result = attack(model, x, y, generator=torch.Generator().manual_seed(0))
        true = perturbation_norm(result.x_adv - x, attack.family)
        assert torch.allclose(result.norm, true, rtol=1e-5, atol=1e-6)
        inside = result.norm <= attack.epsilon * TOL
        if attack.bounded:
            assert bool(inside.all())
        assert bool((result.success & inside).any()), spec  # lowers accuracy (all start correct)
        again = attack(model, x, y, generator=torch.Generator().manual_seed(0))
        assert torch.equal(again.x_adv, result.x_adv)


def test_apgd_t_refuses_models_with_fewer_than_four_classes():
    from jobs.data import dataset_info, load_split
    from jobs.models import build_model

    model = build_model("linear", dataset_info("toy")).eval()
    x, y = load_split("toy", "test", n=4)
    attack = make_attack({"type": "autoattack", "attack": "apgd-t", "norm": "linf", "epsilon": 0.4},
                         bounds=None)
    with pytest.raises(AttackSpecError, match=r"apgd-t.*at least 4 classes; the model has 2"):
        attack(model, x, y)


def test_specs_are_validated_and_defaults_filled():
    a = make_attack({"type": "autoattack", "attack": "apgd-ce", "norm": "l1", "epsilon": 10})
    assert a.spec == {"type": "autoattack", "attack": "apgd-ce", "norm": "l1", "epsilon": 10.0,
                      "n_iter": 100, "n_restarts": 5, "rho": 0.75, "use_largereps": True}
    assert make_attack({"type": "autoattack", "attack": "apgd-t", "norm": "linf", "epsilon": 0.3}
                       ).spec["n_target_classes"] == 9
    b = make_attack({"type": "foolbox", "attack": "boundary_l2", "epsilon": 2})
    assert b.family == "l2" and b.spec["steps"] == 25000 and not b.bounded and b.gradient_free
    assert make_attack(a.spec).spec == a.spec  # canonical form round-trips


@pytest.mark.parametrize(("spec", "match"), [
    ({"type": "foolbox", "attack": "deepfool", "epsilon": 1}, r"'attack': must be one of \["),
    ({"type": "foolbox", "attack": "cw_l2"}, r"'epsilon': required"),
    ({"type": "foolbox", "attack": "cw_l2", "epsilon": 0}, r"'epsilon': must be > 0"),
    ({"type": "foolbox", "attack": "cw_l2", "epsilon": 1, "stepz": 3}, r"'stepz': unknown key.*cw_l2"),
    ({"type": "foolbox", "attack": "cw_l2", "epsilon": 1, "steps": 0}, r"'steps': must be an integer >= 1"),
    ({"type": "foolbox", "attack": "ead_l1", "epsilon": 1, "decision_rule": "L2"},
     r"'decision_rule': must be one of \['EN', 'L1'\]"),
    ({"type": "foolbox", "attack": "cw_l2", "epsilon": 1, "abort_early": 1}, r"'abort_early': must be true"),
    ({"type": "foolbox", "attack": "cw_l2", "epsilon": 1, "norm": "l2"}, r"'norm': unknown key"),
    ({"type": "autoattack", "attack": "square", "epsilon": 1}, r"'norm': must be one of \['linf', 'l2', 'l1'\]"),
    ({"type": "autoattack", "attack": "apgd", "norm": "l2", "epsilon": 1}, r"'attack': must be one of"),
    ({"type": "autoattack", "attack": "square", "norm": "l2", "epsilon": 1, "n_queries": 2.5},
     r"'n_queries': must be an integer"),
    ({"type": "foolbx", "attack": "cw_l2"}, r"'type': must be one of .*'foolbox', 'autoattack'"),
])
def test_bad_specs_name_the_key(spec, match):
    with pytest.raises(AttackSpecError, match=match):
        make_attack(spec)


@pytest.mark.parametrize(("spec", "package"), [
    ({"type": "foolbox", "attack": "cw_l2", "epsilon": 1.0}, "foolbox"),
    ({"type": "autoattack", "attack": "square", "norm": "l2", "epsilon": 1.0}, "pyautoattack"),
])
def test_missing_library_gives_a_clear_error(monkeypatch, spec, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` raise ImportError
    with pytest.raises(MpoError, match=rf"'{package}'.*reinstall mpo"):
        make_attack(spec)


def test_importing_jobs_does_not_import_the_libraries():
    code = (
        "import sys\n"
        "sys.modules['foolbox'] = None; sys.modules['pyautoattack'] = None\n"
        "import jobs, jobs.attacks, jobs.attacks.library, jobs.evaluation, jobs.cascade\n"
        "from jobs.attacks import make_attack\n"
        "from jobs.errors import MpoError\n"
        "make_attack({'type': 'linf', 'epsilon': 0.3})\n"
        "try:\n"
        "    make_attack({'type': 'foolbox', 'attack': 'boundary_l2', 'epsilon': 2.0})\n"
        "except MpoError as err:\n"
        "    print('ERR', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERR attack 'boundary_l2' needs the package 'foolbox'" in out.stdout
    assert "pip install foolbox" in out.stdout


def test_evaluation_rows_are_identical_on_rerun(mnist_model, mnist_dir, tmp_path):
    from jobs.checkpoint import save_checkpoint
    from jobs.config import make_train_config
    from jobs.evaluation import evaluate
    from jobs.models import MadryMNIST
    from jobs.results import read_results
    from jobs.suite import parse_suite

    cfg = make_train_config({"label": "Nat", "dataset": {"name": "mnist"},
                             "model": {"name": "mnist_cnn_small"}, "strategy": "nat",
                             "epochs": 1, "batch_size": 10})
    model = MadryMNIST(cfg.dataset_info(), width=0.25)
    model.load_state_dict(mnist_model[0].state_dict())
    ckpt = save_checkpoint(tmp_path / "nat.pt", model=model, config=cfg.to_dict())
    suite = parse_suite({"name": "rerun", "dataset": "mnist", "attacks": [
        {"name": "l2-boundary", "kind": "gradient-free",
         "spec": {"type": "foolbox", "attack": "boundary_l2", "epsilon": 2.0, "steps": 30,
                  "init_steps": 10}},
        {"name": "linf-square", "kind": "gradient-free",
         "spec": {"type": "autoattack", "attack": "square", "norm": "linf", "epsilon": 0.3,
                  "n_queries": 30}},
    ]})
    runs = [
        read_results(evaluate(ckpt, suite, n_test=N, out_dir=tmp_path / f"run{i}", data_dir=mnist_dir,
                              shard_size=N)).drop(columns="shard_seconds")
        for i in range(2)
    ]
    assert runs[0].equals(runs[1])
    assert runs[0]["fooled"].any()


@pytest.mark.parametrize("norm", ["L2", "L1", "Linf"])
def test_square_with_memoised_windows_is_autoattacks_bit_for_bit(mnist_model, norm):
    from pyautoattack.square import SquareAttack

    from jobs.attacks.autoattack.attack import square_class

    model, x, y = mnist_model
    x, y = x[:24], y[:24]
    eps = {"L2": 1.0, "L1": 6.0, "Linf": 0.1}[norm]
    out = []
    for cls in (SquareAttack, square_class(SquareAttack)):
        atk = cls(model, norm=norm, eps=eps, n_queries=150, p_init=0.8, n_restarts=1, seed=3,
                  device="cpu", verbose=False, resc_schedule=False)
        out.append(atk.perturb(x, y))
    assert torch.equal(out[0], out[1])
    with torch.no_grad():
        fooled = (model(out[1]).argmax(1) != y).sum()
    assert 0 < int(fooled) < len(y)  # the attack did something, and not everything
