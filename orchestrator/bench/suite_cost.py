"""Group 8: what a shipped suite costs, in seconds per 100 test points of one robust model, with
the previous value beside it (``details["before"]``).

- ``suite/toy``: the quickstart's Adv_max (the shipped ``toy`` grid's config), the ``toy`` suite
  on 1000 points; beside it, in the same run, ``toy-nonlinear`` (the attacks the toy suite had before its
  exact attack: Square and Pointwise after PGD / SLIDE) on the same model and points.
- ``suite/mnist-mini``: an Adv_inf quarter-width MNIST CNN trained here (4 epochs of 6000 digits,
  PGD l_inf k = 10, start_small; about 94% clean and 53% PGD-robust on its training data), the
  ``mnist-mini`` suite on the first ``n`` test points (20), scaled to 100; the model's clean
  accuracy on them is in the figure's details. Target: at most the previous mnist-mini suite's
  84 s (PGD, SLIDE and APGD-CE only; its file has the breakdown), the issue's price for
  AutoAttack-level strength.
- The other suites are skipped with the reason (each file's COST section has its measurement).

Each evaluation runs in this process, one torch thread (the bench's), fp32, one shard per attack.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from orchestrator.bench.figures import Figure, Target, ratio_figure, skipped
from orchestrator.bench.workload import Settings

TITLES = {
    "suite/toy": "toy suite, s per 100 points of an Adv_max linear model",
    "suite/mnist-mini": "mnist-mini suite, s per 100 points of an Adv_inf mnist_cnn_small",
    "suite/mnist-paper": "mnist-paper suite, s per 100 points",
    "suite/mnist-strong": "mnist-strong suite, s per 100 points",
    "suite/cifar10-paper": "cifar10-paper suite, s per 100 points",
    "suite/cifar10-strong": "cifar10-strong suite, s per 100 points",
}
#: the previous mnist-mini suite (PGD / SLIDE / APGD-CE), per 100 points of the same kind of model
MNIST_MINI_BEFORE_S = 84.0
TARGETS = {"suite/mnist-mini": Target("<=", MNIST_MINI_BEFORE_S)}
SKIP = {
    "suite/mnist-paper": "its 100 x 40-step restarts cost thousands of CPU-s per 100 points "
                         "(jobs/suites/mnist-paper.yaml, COST)",
    "suite/mnist-strong": "3000-4000 CPU-s per 100 points by its file's estimate "
                          "(jobs/suites/mnist-strong.yaml, COST)",
    "suite/cifar10-paper": "needs a robust CIFAR10 model and CIFAR10 data (a GPU's work)",
    "suite/cifar10-strong": "needs a robust CIFAR10 model and CIFAR10 data (a GPU's work)",
}


def _seconds_per_100(checkpoint: Path, suite: str, n: int, out: Path, data_dir: str | None,
                     ) -> float:
    from jobs.evaluation import evaluate

    t0 = time.perf_counter()
    evaluate(checkpoint, suite, n_test=n, out_dir=out, shard_size=n, data_dir=data_dir,
             device="cpu")
    return (time.perf_counter() - t0) * 100.0 / n


def _clean_accuracy(out: Path) -> float:
    from jobs.results import read_results

    rows = read_results(sorted(out.rglob("*.parquet")))
    return float(rows.drop_duplicates("index")["clean_correct"].mean())


def _train(config: dict, out: Path, data_dir: str | None) -> Path:
    from jobs.training import train

    return train(config, out, data_dir=data_dir, device="cpu").checkpoint


def _toy_adv_max() -> dict:
    """The quickstart's Adv_max: its config in the shipped ``toy`` grid."""
    from orchestrator.plan import load_plan

    plan, _, _ = load_plan("toy")
    return next(t.config for t in plan.trials.values() if t.label == "Adv_max")


def suite_cost_figures(s: Settings, data_dir: str | None, mnist_ok: bool) -> list[Figure]:
    out: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="mpo-bench-suite-") as tmp:
        root = Path(tmp)
        toy = _train(_toy_adv_max(), root / "toy", None)
        n = 200 if s.quick else 1000
        now = _seconds_per_100(toy, "toy", n, root / "toy-now", None)
        before = _seconds_per_100(toy, "toy-nonlinear", n, root / "toy-before", None)
        out.append(ratio_figure("suite/toy", "suite", TITLES["suite/toy"], [now], target=None,
                                unit="s", times={"toy": [now], "toy-nonlinear": [before]},
                                details={"before": before, "points": n,
                                         "before_is": "toy-nonlinear (Square, Pointwise)"}))
        key = "suite/mnist-mini"
        if s.quick:
            out.append(skipped(key, "suite", TITLES[key], "not in --quick", TARGETS[key]))
        elif not mnist_ok:
            out.append(skipped(key, "suite", TITLES[key], "MNIST not found (give --data-dir)",
                               TARGETS[key]))
        else:
            # start_small (eps / 3 in the first epoch), as mnist-mini's recipe: from scratch at
            # eps = 0.3 a short run collapses to a constant prediction (15% clean accuracy)
            ckpt = _train({"label": "bench", "dataset": {"name": "mnist", "n_train": 6000},
                           "model": {"name": "mnist_cnn_small"}, "strategy": "single",
                           "attacks": [{"type": "linf", "epsilon": 0.3, "k": 10}], "epochs": 4,
                           "batch_size": 50, "seed": 0, "start_small": True,
                           "optimizer": {"name": "adam", "lr": 2.0e-3}}, root / "mnist", data_dir)
            n = 20
            value = _seconds_per_100(ckpt, "mnist-mini", n, root / "mnist-now", data_dir)
            clean = _clean_accuracy(root / "mnist-now")
            out.append(ratio_figure(key, "suite", TITLES[key], [value], target=TARGETS[key],
                                    unit="s", times={"mnist-mini": [value]},
                                    details={"before": MNIST_MINI_BEFORE_S, "points": n,
                                             "clean_accuracy": clean,
                                             "before_is": "the previous mnist-mini (PGD, SLIDE, "
                                                          "APGD-CE), from its file"}))
    out += [skipped(k, "suite", TITLES[k], why) for k, why in SKIP.items()]
    return out
