"""Our attacks against peer implementations on the same trained model and the same budgets."""

from __future__ import annotations

import foolbox as fb
import pytest
import torch

from analysis.stats import binomial_one_sided
from jobs.attacks import make_attack

N = 64


@pytest.fixture(scope="module")
def trained(mnist_model):
    model, x, y = mnist_model
    return model, x[:N], y[:N]


def test_slide_at_least_as_strong_as_foolbox_sparse_l1_descent(trained):
    model, x, y = trained
    eps, k, a, q = 4.0, 10, 1.0, 99.0
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))
    peer = fb.attacks.SparseL1DescentAttack(quantile=q / 100, abs_stepsize=a, steps=k, random_start=False)
    _, clipped, peer_success = peer(fmodel, x, y, epsilons=eps)
    assert (clipped - x).abs().flatten(1).sum(1).max() <= eps * (1 + 1e-4)
    ours = make_attack({"type": "l1", "epsilon": eps, "k": k, "a": a, "perc": q, "random_start": False})
    r = ours(model, x, y, generator=torch.Generator().manual_seed(0))
    peer_rate, our_rate = peer_success.float().mean().item(), r.success.float().mean().item()
    assert 0 < peer_rate < 1, "the budget should make the comparison informative"
    assert our_rate >= peer_rate, (our_rate, peer_rate)


@pytest.mark.peer
def test_linf_pgd_at_least_as_strong_as_torchattacks_pgd(trained):
    torchattacks = pytest.importorskip("torchattacks", reason="torchattacks not installed (pip install -e .[peers])")
    model, x, y = trained
    eps, k, a = 0.1, 10, 0.025
    # From the clean input (no random start), so that one run of each compares the two ascents
    # (theirs on the cross-entropy, ours on the CW margin) and not two draws of random starts.
    peer = torchattacks.PGD(model, eps=eps, alpha=a, steps=k, random_start=False)
    x_peer = peer(x, y)
    assert (x_peer - x).abs().max() <= eps + 1e-6
    with torch.no_grad():
        peer_fooled = model(x_peer).argmax(1) != y
    r = make_attack({"type": "linf", "epsilon": eps, "k": k, "a": a, "random_start": False})(
        model, x, y, generator=torch.Generator().manual_seed(0))
    assert 0 < peer_fooled.float().mean().item() < 1, "the budget should make the comparison informative"
    # The two ascend different losses (cross-entropy, CW margin), so on a few inputs either can
    # win: ours must not fool significantly fewer, per input (one-sided exact binomial test on
    # the inputs only one of them fooled).
    only_peer = int((peer_fooled & ~r.success).sum())
    only_ours = int((r.success & ~peer_fooled).sum())
    assert binomial_one_sided(only_peer, only_ours) > 0.05, (only_peer, only_ours)
