"""What a bench figure is, and how its two sides are timed.

A figure is a ratio of two timings taken in the same run, interleaved (A, B, A, B, ...), so that
a noisy machine slows both sides alike: its value is the median over repetitions, its spread the
min and max, and the absolute median seconds of each side are kept too.
"""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

import torch

#: status of a figure
PASS, MISS, INFO, SKIPPED, ERROR = "pass", "miss", "info", "skipped", "error"
STATUSES = (PASS, MISS, INFO, SKIPPED, ERROR)

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """``value <op> bound``; ``op`` is ``<=`` (a cost ratio) or ``>=`` (a speedup)."""

    op: str
    bound: float

    def met(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@dataclass
class Figure:
    key: str  # unique, e.g. "attack/pgd_linf" or "gpu/attack/pgd_linf"
    group: str
    title: str
    status: str
    value: float | None = None
    unit: str = "x"
    target: str | None = None
    spread: list[float] | None = None  # [min, max] of the per-repetition values
    reps: int | None = None
    times_s: dict[str, float] = field(default_factory=dict)  # median seconds per side
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able notes of the measurement
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio_figure(key: str, group: str, title: str, values: list[float], *,
                 target: Target | None, times: dict[str, list[float]], unit: str = "x",
                 details: dict[str, Any] | None = None) -> Figure:
    """A figure from per-repetition values: median, [min, max], pass/miss against ``target``."""
    value = statistics.median(values)
    status = INFO if target is None else (PASS if target.met(value) else MISS)
    return Figure(
        key=key, group=group, title=title, status=status, value=value, unit=unit,
        target=None if target is None else str(target), spread=[min(values), max(values)],
        reps=len(values), times_s={k: statistics.median(v) for k, v in times.items()},
        details=details or {},
    )


def skipped(key: str, group: str, title: str, reason: str, target: Target | None = None) -> Figure:
    return Figure(key=key, group=group, title=title, status=SKIPPED, reason=reason,
                  target=None if target is None else str(target))


def failed(key: str, group: str, title: str, err: Exception) -> Figure:
    return Figure(key=key, group=group, title=title, status=ERROR,
                  reason=f"{type(err).__name__}: {err}")


def guarded(group: str, keys: list[str], measure: Callable[[], list[Figure]]) -> list[Figure]:
    """``measure()``, or one ``error`` figure per key (with the traceback) when it raises: one
    broken group does not lose the others' figures."""
    try:
        return measure()
    except Exception as err:
        tb = traceback.format_exc()[-3000:]
        return [Figure(key=k, group=group, title=k, status=ERROR,
                       reason=f"{type(err).__name__}: {err}", details={"traceback": tb})
                for k in keys]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a clock read alone would
    time the launch, not the work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Keep(Generic[T]):
    """A function to time that keeps its last return value (the result of the timed run)."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.last: T | None = None

    def __call__(self) -> T:
        self.last = self.fn()
        return self.last

    @property
    def result(self) -> T:
        if self.last is None:
            raise RuntimeError("the function was never run")
        return self.last


def interleaved(fns: dict[str, Callable[[], object]], *, reps: int, warmup: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds of each function per repetition, the functions run in turn (A, B, A, B, ...)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def per_rep(a: list[float], b: list[float]) -> list[float]:
    """``a[i] / b[i]``: the ratio of two sides, repetition by repetition."""
    return [x / y for x, y in zip(a, b, strict=True)]
