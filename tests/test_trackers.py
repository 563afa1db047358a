"""The sweep's trackers: TensorBoard event files (always), MLflow (a local file store) and
Weights & Biases (offline mode), written by one real sweep and read back with each tool's own
reader: runs named by model, the config as parameters, training metrics stepped by epoch and
evaluation metrics by shards done. mlflow and wandb are optional extras: their tests skip
without them, and fail instead when MPO_REQUIRE_SERVERS=1 (CI installs them with mpo[dev])."""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.tracking import Point, flat_params, points, run_names
from tests.test_sweep import SMALL, write_grid

REQUIRE = os.environ.get("MPO_REQUIRE_SERVERS") == "1"


def need(module: str):
    """The module, or a skip (a failure under MPO_REQUIRE_SERVERS=1) when it is not installed."""
    if REQUIRE:
        return __import__(module)
    return pytest.importorskip(module, reason=f"{module} is not installed (pip install "
                                              f"'mpo[{module}]')")


def installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Names, parameters, points (no Ray cluster)


def test_run_names_are_label_and_hash_and_unique():
    names = run_names({"mnist-nat-97058719": "Nat", "cifar10-nat-1234abcd": "Nat",
                       "toy-max-linf_l1-da748b3a": "Adv max/1"})
    assert names == {"mnist-nat-97058719": "Nat-97058719", "cifar10-nat-1234abcd": "Nat-1234abcd",
                     "toy-max-linf_l1-da748b3a": "Adv_max_1-da748b3a"}
    # two ids that share their hash (other grids' prefixes): the whole ids keep them apart
    clash = run_names({"a-nat-0123abcd": "Nat", "b-nat-0123abcd": "Nat"})
    assert clash == {"a-nat-0123abcd": "Nat-a-nat-0123abcd", "b-nat-0123abcd": "Nat-b-nat-0123abcd"}


def test_flat_params_spell_out_nested_configs():
    params = flat_params("config", {"optimizer": {"lr": 0.01, "milestones": [5, 8]},
                                    "attacks": [{"type": "linf", "k": 10}], "augment": None})
    assert params == {"config.optimizer.lr": 0.01, "config.optimizer.milestones": "[5, 8]",
                      "config.attacks.0.type": "linf", "config.attacks.0.k": 10,
                      "config.augment": "None"}


def test_points_put_training_on_epochs_and_evaluation_on_shards():
    train = points({"phase": "train", "epoch": 3, "epochs": 6, "train_loss": 1.5,
                    "clean_acc": 0.9, "adv_acc/linf": 0.4, "start_small": False,
                    "training_iteration": 17, "time_total_s": 3.0, "pid": 1})
    assert train == [Point("train", 3, {"train/loss": 1.5, "train/clean_acc": 0.9,
                                        "train/adv_acc/linf": 0.4, "train/epoch": 3.0})]
    progress = points({"phase": "eval", "shards_done": 5, "shards_failed": 1,
                       "shards_total": 32, "training_iteration": 23})
    assert progress == [Point("eval", 5, {"eval/shards_done": 5.0, "eval/shards_failed": 1.0})]
    done = points({"phase": "done", "shards_done": 32, "shards_total": 32, "eval/clean": 0.98,
                   "eval/groups/toy/union": 0.3, "training_iteration": 40})
    assert done[0].step == 32 and done[0].metrics["eval/groups/toy/union"] == 0.3
    assert points({"training_iteration": 1}) == []


# ----------------------------------------------------------------------------------------------
# Options refused before anything starts


def test_missing_tracker_package_is_one_error_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    result = CliRunner().invoke(main, ["sweep", "toy", "--storage", str(tmp_path),
                                       "--mlflow", str(tmp_path / "mlruns")])
    assert result.exit_code == 2 and not (tmp_path / "toy").exists()
    assert ("Error: --mlflow needs the mlflow package: pip install 'mpo[mlflow]' (or pip "
            "install mlflow-skinny)") in result.output
    monkeypatch.setitem(sys.modules, "wandb", None)
    result = CliRunner().invoke(main, ["sweep", "toy", "--wandb", "mpo"])
    assert result.exit_code == 2 and "Error: --wandb needs the wandb package" in result.output


def test_wandb_without_a_key_or_offline_mode_is_refused(monkeypatch, tmp_path):
    need("wandb")
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no saved login
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    result = CliRunner().invoke(main, ["sweep", "toy", "--wandb", "mpo"])
    assert result.exit_code == 2, result.output
    assert "Error: --wandb: no W&B API key: run `wandb login`" in result.output
    assert "WANDB_MODE=offline" in result.output
    result = CliRunner().invoke(main, ["sweep", "toy", "--wandb", "team/mpo"])
    assert result.exit_code == 2 and "give a W&B project name (no '/'" in result.output


# ----------------------------------------------------------------------------------------------
# One sweep, every tracker


@pytest.fixture(scope="module")
def tracked_run(ray_cluster, tmp_path_factory):
    """A sweep of three toy models with TensorBoard, MLflow (file store) and W&B (offline) when
    installed, in which Adv_inf fails after epoch 2 and is restarted by Tune."""
    root = tmp_path_factory.mktemp("trackers")
    grid = write_grid(root)
    mp = pytest.MonkeyPatch()
    mp.setenv("MPO_TEST_FAULTS", json.dumps({"train_fail_after_epoch": 2,
                                             "train_fail_model": "Adv_inf"}))
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(root / "wandb"))
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    extra = []
    if installed("mlflow"):
        extra += ["--mlflow", (root / "mlruns").as_uri()]
    if installed("wandb"):
        extra += ["--wandb", "mpo-test"]
    try:
        result = CliRunner().invoke(main, ["sweep", str(grid), "--storage", str(root / "runs"),
                                           "--name", "tracked", *SMALL, *extra])
    finally:
        mp.undo()
    assert result.exit_code == 0, result.output + repr(result.exception)
    run_dir = root / "runs" / "tracked"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    names = run_names({mid: t["label"] for mid, t in manifest["trials"].items()})
    return root, run_dir, names, result.output


def test_sweep_output_in_a_file_is_plain_event_lines(tracked_run):
    _, run_dir, names, output = tracked_run
    for label in ("Nat", "Adv_inf", "Adv_max"):
        for epoch in (1, 2, 3):
            assert re.search(rf"^\[\d\d:\d\d:\d\d\] {label} epoch {epoch}/3 loss \d\.\d{{3}} "
                             r"clean \d\.\d{3}", output, re.M), (label, epoch)
        assert re.search(rf"^\[\d\d:\d\d:\d\d\] {label} done in \d+:\d\d: 4/4 shards, clean "
                         r"\d\.\d{3}, toy union \d\.\d{3} / average \d\.\d{3}$", output, re.M)
    assert "Adv_inf: trial failed (InjectedFault" in output
    before_results = output.split("results")[0]
    assert "┃" not in before_results  # no live table in a file
    # the results table at full width: one line per model, id and numbers whole
    for mid in names:
        assert re.search(rf"│ \S+ +│ {re.escape(mid)} +│ done +│ +\d\.\d{{3}} │", output), mid
    assert not any(len(line) == 80 for line in output.splitlines())
    assert f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}" in output
    # Tune's own TBX logger is replaced: no event files in the trials' Tune folders
    assert not list((run_dir / "tune").rglob("events.out.tfevents.*"))


def test_tensorboard_runs_by_model_with_epoch_and_shard_axes(tracked_run):
    need("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, names, _ = tracked_run
    assert sorted(p.name for p in (run_dir / "tensorboard").iterdir()) == sorted(names.values())
    for mid, name in names.items():
        acc = EventAccumulator(str(run_dir / "tensorboard" / name))
        acc.Reload()
        scalars = set(acc.Tags()["scalars"])
        assert {"train/loss", "train/clean_acc", "train/epoch", "eval/shards_done",
                "eval/clean", "eval/groups/toy/union", "eval/groups/toy/average"} <= scalars
        assert all(t.startswith(("train/", "eval/")) for t in scalars)
        # epochs 1..3 once each, also for the trial restarted after epoch 2
        assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3], name
        assert [e.value for e in acc.Scalars("train/epoch")] == [1.0, 2.0, 3.0]
        assert {e.step for e in acc.Scalars("eval/shards_done")} == {1, 2, 3, 4}
        (union,) = acc.Scalars("eval/groups/toy/union")
        record = json.loads((run_dir / "trials" / mid / "trial.json").read_text())
        assert union.step == 4
        assert union.value == pytest.approx(record["summary"]["groups"]["toy"]["union"])
        assert "config/text_summary" in acc.Tags()["tensors"]


def test_mlflow_runs_params_and_metrics(tracked_run):
    need("mlflow")
    from mlflow.tracking import MlflowClient

    root, run_dir, names, _ = tracked_run
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((root / "mlruns").as_uri())
    exp = client.get_experiment_by_name("mpo-toy-test")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(names.values())  # one per model
    by_name = {r.info.run_name: r for r in runs}
    for mid, name in names.items():
        run = by_name[name]
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert params["model_id"] == mid and params["grid"] == "toy-test"
        assert params["config.epochs"] == "3" and params["config.optimizer.lr"] == "0.01"
        assert params["run_dir"] == str(run_dir)
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == [1, 2, 3]
        record = json.loads((run_dir / "trials" / mid / "trial.json").read_text())
        (union,) = client.get_metric_history(run.info.run_id, "eval/groups/toy/union")
        assert union.step == 4
        assert union.value == pytest.approx(record["summary"]["groups"]["toy"]["union"])


def wandb_records(path: Path):
    """The records of an offline W&B run file (``run-<id>.wandb``: a ``:W&B`` header, then a
    LevelDB log of protobuf ``Record`` messages in 32 KiB blocks), as W&B's own sync reads it."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # full / first ... middle, last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def test_wandb_offline_runs_named_with_config_and_axes(tracked_run):
    need("wandb")
    root, run_dir, names, _ = tracked_run
    folders = sorted((root / "wandb" / "wandb").glob("offline-run-*"))
    assert len(folders) == 3
    seen = {}
    for folder in folders:
        (run_file,) = folder.glob("run-*.wandb")
        run, config, axes, history = None, {}, {}, []
        for rec in wandb_records(run_file):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                run = rec.run
                config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
            elif kind == "config":
                config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
            elif kind == "metric":
                axes[rec.metric.name or rec.metric.glob_name] = rec.metric.step_metric
            elif kind == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                for i in rec.history.item})
        assert run is not None and run.run_group == "tracked" and run.project == "mpo-test"
        seen[run.display_name] = config["model_id"]
        assert axes["train/*"] == "train/epoch" and axes["eval/*"] == "eval/shards_done"
        assert [h["train/epoch"] for h in history if "train/loss" in h] == [1, 2, 3]
        last = history[-1]
        record = json.loads((run_dir / "trials" / config["model_id"] / "trial.json").read_text())
        assert last["eval/shards_done"] == 4
        assert last["eval/groups/toy/union"] == pytest.approx(
            record["summary"]["groups"]["toy"]["union"])
        assert config["config.epochs"] == 3 and config["grid"] == "toy-test"
    assert seen == {name: mid for mid, name in names.items()}


def test_status_of_the_run_through_a_pipe_is_not_folded(tracked_run):
    from tests.test_console import _assert_unfolded, _piped

    _, run_dir, names, _ = tracked_run
    text = _piped("status", str(run_dir))
    _assert_unfolded(text, ["groups", "epoch", "attempts", "union / average"])
    for mid in names:  # one line per trial: label, id, groups, state whole
        assert re.search(rf"│ \S+ +│ {re.escape(mid)} +│ toy +│ done +│ +3/3 │ +4/4 │", text), mid
    assert "3 done; shards 12/12" in text and "left out" not in text
