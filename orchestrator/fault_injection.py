"""TEST-ONLY fault injection: how the sweep's own tests make trials and workers fail on purpose.

Production code touches this module at three places, each one call:

- ``requested_faults()`` when a sweep starts (``orchestrator.runfolder.settings_for``): the
  faults asked for in the ``MPO_TEST_FAULTS`` environment variable (a JSON object; without it,
  none), which travel to every trial in its Tune config;
- ``after_epoch(...)`` in the trainable, after each epoch's state and Tune checkpoint are saved;
- ``before_shard(...)`` in each evaluation task, before it evaluates.

Each fault fires once per run folder (a marker file under ``RUN_DIR/faults/`` remembers that it
fired), so a retried trial or task then succeeds. Keys:

- ``"train_fail_after_epoch": N`` and ``"train_fail_model": LABEL``: the trial of that label
  raises ``InjectedFault`` after epoch N (Tune restarts it from its checkpoint);
- ``"train_fail_always_model": LABEL``: the trial of that label raises ``InjectedFault``
  after its first epoch every time (a trial that fails for good);
- ``"eval_crash_model": LABEL``: the first evaluation task of that label kills its own worker
  process (``os._exit``), a system failure that Ray retries;
- ``"train_sleep": SECONDS``: sleep this long after every epoch (to kill a driver or a node
  mid-training);
- ``"eval_sleep": SECONDS``: every evaluation task sleeps this long before it evaluates (to
  remove a node while its tasks run).

With no faults requested, the hooks return at once and nothing here does anything.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV_VAR = "MPO_TEST_FAULTS"
KNOWN = ("train_fail_after_epoch", "train_fail_model", "eval_crash_model", "train_sleep",
         "eval_sleep", "train_fail_always_model")

#: the requested faults: key -> epoch number, label or seconds
Faults = dict[str, float | int | str]


class InjectedFault(RuntimeError):
    """Raised by an injected training fault (tests only)."""


def requested_faults() -> Faults:
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


def after_epoch(faults: Faults, run_dir: Path, label: str, epoch: int) -> None:
    """The trainable's hook: sleep, or fail the trial once, after ``epoch``."""
    if not faults:
        return
    if faults.get("train_sleep"):
        time.sleep(float(faults["train_sleep"]))
    n = faults.get("train_fail_after_epoch")
    fail_here = n is not None and faults.get("train_fail_model") == label and epoch == int(n)
    if fail_here and _fire_once(run_dir, f"train-{label}-{epoch}"):
        raise InjectedFault(f"injected training failure after epoch {epoch} ({ENV_VAR})")
    if faults.get("train_fail_always_model") == label:
        raise InjectedFault(f"injected training failure after epoch {epoch}, every time "
                            f"({ENV_VAR})")


def before_shard(faults: Faults, run_dir: Path, label: str) -> None:
    """The evaluation task's hook: kill this worker process once, or sleep."""
    if not faults:
        return
    if faults.get("eval_crash_model") == label and _fire_once(run_dir, f"eval-{label}"):
        os._exit(1)
    if faults.get("eval_sleep"):
        time.sleep(float(faults["eval_sleep"]))
