"""Reduced precision changes no finding: robust accuracy with bf16 autocast against fp32."""

from __future__ import annotations

import copy

import torch

from analysis.stats import wilson_interval
from jobs.attacks import make_attack
from jobs.models import set_execution


def test_bf16_robust_accuracy_lies_in_the_fp32_interval(mnist_model):
    """On the CPU where CUDA is absent (autocast to bf16 exists on both): the small CNN's clean
    and PGD l_inf robust accuracy in bf16 lie in the 95% Wilson interval of its fp32 ones, and
    the bf16 results are still the model's at x_adv (float32 logits, constraints held)."""
    model, x, y = mnist_model
    bf16 = set_execution(copy.deepcopy(model), precision="bf16")
    attack = make_attack({"type": "linf", "epsilon": 0.1, "k": 10})
    n = len(y)
    for m in (model, bf16):
        assert m(x[:2]).dtype == torch.float32
    with torch.no_grad():
        clean = [int((m(x).argmax(1) == y).sum()) for m in (model, bf16)]
    robust = [int((~attack(m, x, y, generator=torch.Generator().manual_seed(0)).success).sum())
              for m in (model, bf16)]
    for fp32_count, bf16_count in (clean, robust):
        lo, hi = wilson_interval(fp32_count, n)
        assert lo <= bf16_count / n <= hi, (fp32_count, bf16_count)
    assert 0.1 < robust[0] / n < 0.9, "the budget should make the comparison informative"


def test_training_in_bf16_writes_a_plain_checkpoint(tmp_path):
    """``train(..., precision="bf16")`` runs the model under autocast and saves the usual
    float32 weights, which load into a model built as usual."""
    from jobs.config import make_train_config
    from jobs.training import load_trained, train

    config = make_train_config({
        "dataset": {"name": "toy", "params": {"n_train": 200, "n_test": 10}},
        "model": {"name": "mlp"}, "strategy": "single",
        "attacks": [{"type": "linf", "epsilon": 0.4, "k": 3}],
        "epochs": 1, "batch_size": 50,
    })
    result = train(config, tmp_path, precision="bf16")
    assert len(result.metrics) == 1 and torch.isfinite(torch.tensor(result.metrics[0]["train_loss"]))
    model, loaded, _ = load_trained(result.checkpoint)
    assert loaded == config
    assert all(p.dtype == torch.float32 for p in model.parameters())
