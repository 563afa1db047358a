"""Fault injection for the sweep's own tests. Not for users.

The driver reads ``MPO_TEST_FAULTS`` (a JSON object) when a sweep starts and passes it to every
trial in its config; the trainable and the evaluation tasks honour it. Each fault fires once per
run folder (a marker file under ``RUN_DIR/faults/`` remembers that it fired), so a retried trial
or task then succeeds. Keys:

- ``"train_fail_after_epoch": N`` and ``"train_fail_model": LABEL``: the trial of that label
  raises after epoch N's state and Tune checkpoint are saved (the trial is restarted by Tune).
- ``"eval_crash_model": LABEL``: the first evaluation task of that label kills its own worker
  process (``os._exit``), a system failure that Ray retries.
- ``"train_sleep": SECONDS``: sleep this long after every epoch (to kill a driver mid-training).

Without the variable nothing here does anything.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ENV_VAR = "MPO_TEST_FAULTS"
KNOWN = ("train_fail_after_epoch", "train_fail_model", "eval_crash_model", "train_sleep")


class InjectedFault(RuntimeError):
    """Raised by an injected training fault (tests only)."""


def from_env() -> dict[str, Any]:
    raw = os.environ.get(ENV_VAR)
    if not raw:
        return {}
    try:
        faults = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{ENV_VAR}: not a JSON object ({err})") from None
    if not isinstance(faults, dict) or set(faults) - set(KNOWN):
        raise ValueError(f"{ENV_VAR}: a JSON object with keys among {', '.join(KNOWN)}")
    return faults


def _fire_once(run_dir: Path, name: str) -> bool:
    """True the first time ``name`` is asked for in this run folder (atomic marker file)."""
    marker = run_dir / "faults" / name
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def after_epoch(faults: dict[str, Any], run_dir: Path, label: str, epoch: int) -> None:
    if not faults:
        return
    if faults.get("train_sleep"):
        time.sleep(float(faults["train_sleep"]))
    n = faults.get("train_fail_after_epoch")
    fail_here = n is not None and faults.get("train_fail_model") == label and epoch == int(n)
    if fail_here and _fire_once(run_dir, f"train-{label}-{epoch}"):
        raise InjectedFault(f"injected training failure after epoch {epoch} ({ENV_VAR})")


def before_shard(faults: dict[str, Any], run_dir: Path, label: str) -> None:
    if faults and faults.get("eval_crash_model") == label and _fire_once(run_dir, f"eval-{label}"):
        os._exit(1)
