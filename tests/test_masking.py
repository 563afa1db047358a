"""Gradient masking: a thresholding first layer (what the paper finds in MNIST Adv_inf models)
fools first-order attacks but not a gradient-free one, and the analysis flags it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from analysis.loading import ModelInfo
from analysis.metrics import masking_flag, per_input
from jobs.checkpoint import save_checkpoint
from jobs.config import make_train_config
from jobs.data import DatasetInfo
from jobs.evaluation import evaluate
from jobs.model_names import MODEL_NAMES
from jobs.models import MODELS, MadryMNIST
from jobs.results import read_results
from jobs.suite import parse_suite

N_TEST = 24


class ThresholdCNN(nn.Module):
    """Binarises the input at 0.5 before the CNN: the input gradient is exactly zero."""

    def __init__(self, info: DatasetInfo, *, width: float = 0.25) -> None:
        super().__init__()
        self.net = MadryMNIST(info, width=width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # + 0 * x keeps x in the graph, so autograd returns a zero gradient rather than failing
        return self.net((x > 0.5).to(x.dtype) + 0 * x)


def checkpoint(tmp_path, name: str, cnn: nn.Module, label: str):
    cfg = make_train_config({
        "label": label, "dataset": {"name": "mnist"}, "model": {"name": name},
        "strategy": "nat", "epochs": 1, "batch_size": 10,
    })
    model = ThresholdCNN(cfg.dataset_info()) if name == "threshold_cnn" else MadryMNIST(
        cfg.dataset_info(), width=0.25)
    (model.net if name == "threshold_cnn" else model).load_state_dict(cnn.state_dict())
    return save_checkpoint(tmp_path / f"{name}.pt", model=model, config=cfg.to_dict()), cfg


SUITE = {
    "name": "masking-test",
    "dataset": "mnist",
    "seed": 0,
    "groups": {"mnist-l2": {"families": ["l2"]}},
    "attacks": [
        {"name": "l2-pgd", "kind": "first-order", "spec": {"type": "l2", "epsilon": 2.0, "k": 20}},
        {"name": "l2-square", "kind": "gradient-free",
         "spec": {"type": "autoattack", "attack": "square", "norm": "l2", "epsilon": 2.0,
                  "n_queries": 300}},
    ],
}


@pytest.mark.parametrize(("model_name", "masked"), [("threshold_cnn", True), ("mnist_cnn", False)])
def test_masking_flag_fires_only_on_the_masked_model(
    mnist_model, mnist_dir, tmp_path, monkeypatch, model_name, masked
):
    monkeypatch.setitem(MODELS, "threshold_cnn", (ThresholdCNN, {"width": 0.25}, "test only"))
    monkeypatch.setitem(MODEL_NAMES, "threshold_cnn", "test only")
    cnn = mnist_model[0]
    ckpt, cfg = checkpoint(tmp_path, model_name if masked else "mnist_cnn_small", cnn,
                           "Adv_inf" if masked else "Nat")
    suite = parse_suite(SUITE)
    paths = evaluate(ckpt, suite, n_test=N_TEST, out_dir=tmp_path / "run", data_dir=mnist_dir,
                     shard_size=N_TEST)
    rows = read_results(paths)
    model_id = cfg.model_id()
    acc = rows.groupby("attack")["robust"].mean()
    clean = rows.groupby("index")["clean_correct"].first().mean()
    flag = masking_flag(rows, ModelInfo(model_id=model_id, label=cfg.label), "l2")
    assert flag is not None and flag.first_order == ("l2-pgd",)
    if masked:
        # first-order: zero gradient, nothing found; gradient-free: most inputs broken
        assert clean >= 0.7
        assert acc["l2-pgd"] == pytest.approx(clean)
        assert acc["l2-square"] <= clean - 0.25
        assert flag.flagged and flag.extra >= 5 and flag.fewer == 0
        assert dict(flag.attacks)["l2-square"] == flag.extra
    else:
        assert acc["l2-pgd"] <= acc["l2-square"]
        assert not flag.flagged
    table = per_input(rows, model_id, ["l2"])
    assert len(table) == N_TEST
