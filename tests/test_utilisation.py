"""orchestrator.utilisation: busy CPU-seconds from the run folder's records, clipped to a driver
run's window, over its wall time x CPUs (no Ray; the sweep tests check a real run's record)."""

from __future__ import annotations

import json

import pytest

from jobs.run_folder import RunFolder
from orchestrator.utilisation import Busy, busy_intervals, describe, utilisation


def test_utilisation_clips_each_interval_to_the_window_and_weights_it_by_its_threads():
    intervals = [
        Busy("train", "a", 0.0, 10.0, 1),     # 10 CPU-s
        Busy("evaluate", "a", 10.0, 20.0, 2),  # 2 threads: 20 CPU-s
        Busy("train", "b", -5.0, 5.0, 1),     # half before the window: 5 CPU-s
        Busy("evaluate", "b", 30.0, 40.0, 1),  # after the window: 0
    ]
    u = utilisation(intervals, started=0.0, finished=20.0, cpus=2)
    assert u["by_kind"] == {"evaluate": 20.0, "train": 15.0}
    assert u["busy_cpu_seconds"] == 35.0 and u["wall_seconds"] == 20.0
    assert u["fraction"] == pytest.approx(35 / 40)
    assert describe(u) == "busy 88% of 2 CPUs x 20 s (evaluate 20, train 15 CPU-s)"
    assert utilisation([], started=5.0, finished=5.0, cpus=2)["fraction"] is None


def test_busy_intervals_read_training_attempts_and_shard_runs(tmp_path):
    rd = RunFolder(tmp_path / "run")
    rd.update_trial("m1", model_id="m1", train_runs=[
        {"started": "2026-01-01T00:00:00.000+00:00", "finished": "2026-01-01T00:00:04.000+00:00",
         "threads": {"intra_op": 2, "inter_op": 1}},
        {"started": "2026-01-01T00:00:05.000+00:00"},  # cut off before its first epoch: no end
    ])
    shards = rd.trial_dir("m1") / "shards"
    shards.mkdir(parents=True)
    (shards / "linf__0-10.json").write_text(json.dumps({"runs": [
        {"started": "2026-01-01T00:00:06.000+00:00", "finished": "2026-01-01T00:00:07.500+00:00",
         "threads": {"intra_op": 1, "inter_op": 1}, "computed": True}]}))
    (shards / "broken.json").write_text("{not json")  # an unreadable record is passed over
    got = sorted(busy_intervals(rd, ["m1", "absent"]), key=lambda b: b.start)
    assert [(b.kind, b.end - b.start, b.cpus) for b in got] == [("train", 4.0, 2),
                                                                  ("evaluate", 1.5, 1)]
