"""How busy a sweep kept its CPUs, from the run folder's own records (no Ray).

A driver run's utilisation is the CPU-seconds its trials and tasks spent working, over its
wall time x the cluster's CPUs. Working means: training (trial.json's ``train_runs``, one entry
per training attempt, its end moved forward at every epoch) and evaluating (each shard's
side record ``trials/<id>/shards/<shard>.json``, one entry per run of its task); each interval
counts its torch intra-op threads as busy CPUs and is clipped to the driver run's window, so a
resumed sweep counts only its own work (the trials it ran; an interrupted driver run records
none). What is not counted is the overhead a sweep pays: the
cluster's start, Tune's per-trial actor and placement group, a worker's start and imports, and
CPUs left without a trial (a sweep's last trials).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import Any

from jobs.errors import MpoError
from jobs.io import read_json
from jobs.run_folder import RunFolder


@dataclass(frozen=True)
class Busy:
    """One interval of work: ``kind`` (train, evaluate), its model, its start and end (unix
    seconds) and the CPUs it kept busy (its torch threads)."""

    kind: str
    model_id: str
    start: float
    end: float
    cpus: int


def _unix(stamp: object) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return dt.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def _threads(record: dict[str, Any]) -> int:
    threads = record.get("threads") or {}
    return max(1, int(threads.get("intra_op") or 1)) if isinstance(threads, dict) else 1


def _interval(kind: str, mid: str, record: dict[str, Any]) -> Busy | None:
    start, end = _unix(record.get("started")), _unix(record.get("finished"))
    if start is None or end is None or end < start:
        return None  # a run still going, or cut off before it recorded an end
    return Busy(kind, mid, start, end, _threads(record))


def busy_intervals(rd: RunFolder, model_ids: list[str]) -> list[Busy]:
    """Every recorded interval of work of the trials ``model_ids``."""
    out: list[Busy] = []
    for mid in model_ids:
        for run in rd.trial_record(mid).get("train_runs") or []:
            if (b := _interval("train", mid, run)) is not None:
                out.append(b)
        shard_dir = rd.trial_dir(mid) / "shards"
        for path in sorted(shard_dir.glob("*.json")) if shard_dir.is_dir() else []:
            with contextlib.suppress(OSError, ValueError, MpoError):
                for run in read_json(path).get("runs", []):
                    if (b := _interval("evaluate", mid, run)) is not None:
                        out.append(b)
    return out


def utilisation(intervals: list[Busy], *, started: float, finished: float,
                cpus: float) -> dict[str, Any]:
    """CPU-seconds of work inside [started, finished] by kind, and their fraction of
    (finished - started) x ``cpus``."""
    wall = max(0.0, finished - started)
    by_kind: dict[str, float] = {}
    for b in intervals:
        seconds = max(0.0, min(b.end, finished) - max(b.start, started))
        by_kind[b.kind] = by_kind.get(b.kind, 0.0) + seconds * b.cpus
    busy = sum(by_kind.values())
    capacity = wall * cpus
    return {"cpus": cpus, "wall_seconds": round(wall, 1),
            "busy_cpu_seconds": round(busy, 1),
            "by_kind": {k: round(v, 1) for k, v in sorted(by_kind.items())},
            "fraction": round(busy / capacity, 3) if capacity > 0 else None}


def sweep_utilisation(rd: RunFolder, model_ids: list[str], *, started: float, finished: float,
                      cpus: float) -> dict[str, Any]:
    """``utilisation`` of one driver run from the run folder's records."""
    return utilisation(busy_intervals(rd, model_ids), started=started, finished=finished,
                       cpus=cpus)


def describe(u: dict[str, Any]) -> str:
    """``busy 56% of 2 CPUs x 129 s (train 45, evaluate 100 CPU-s)``"""
    if u.get("fraction") is None:
        return "busy: not measured"
    kinds = ", ".join(f"{k} {v:.0f}" for k, v in u["by_kind"].items()) or "no work recorded"
    return (f"busy {100 * u['fraction']:.0f}% of {u['cpus']:g} CPUs x {u['wall_seconds']:.0f} s "
            f"({kinds} CPU-s)")

