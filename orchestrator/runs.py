"""Planning a sweep without Ray: resources per trial, the run folder, resuming checks.

Used by ``mpo sweep`` (also for ``--dry-run``, which imports no Ray) and by the Ray driver in
``orchestrator.sweep``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from jobs.errors import MpoError
from jobs.io import load_yaml, run_record, write_json_atomic, write_text_atomic
from orchestrator import faults as _faults
from orchestrator.grid import SweepPlan, expand_grid, load_grid_text, parse_grid
from orchestrator.rundir import RunDir, RunDirError, read_json

#: Default GPU fraction of one evaluation worker when trials use GPUs.
EVAL_GPU_SHARE = 0.5
#: Default CPUs of each of the two bundles of a CPU-only trial with one evaluation worker.
CPU_SHARE = 0.5


class SweepError(MpoError, RuntimeError):
    """A sweep that cannot start or resume; the message says why and what to do."""


@dataclass(frozen=True)
class Resources:
    """What one trial reserves: bundle 0 for training, ``eval_workers`` bundles for its shards."""

    gpus_per_trial: float
    cpus_per_trial: float = 1.0
    eval_workers: int = 1
    eval_cpus: float = 1.0
    eval_gpus: float = 0.0

    def bundles(self) -> list[dict[str, float]]:
        head = {"CPU": self.cpus_per_trial}
        if self.gpus_per_trial:
            head["GPU"] = self.gpus_per_trial
        worker = {"CPU": self.eval_cpus}
        if self.eval_gpus:
            worker["GPU"] = self.eval_gpus
        return [head] + [dict(worker) for _ in range(self.eval_workers)]

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for bundle in self.bundles():
            for key, value in bundle.items():
                out[key] = out.get(key, 0.0) + value
        return out


def make_resources(*, gpus_per_trial: float | None, cpus_per_trial: float | None,
                   eval_workers: int, eval_cpus: float | None, eval_gpus: float | None,
                   cluster_gpus: float) -> Resources:
    """Fill the defaults: 1 GPU per trial where the cluster has GPUs, else 0; then half a GPU
    per evaluation worker (two evaluation tasks share a GPU; the training bundle keeps whole
    GPUs so that two trials never train on one). CPUs: 1 per bundle, except for a CPU-only
    trial with one evaluation worker and neither CPU count given: a trial trains or evaluates,
    never both, each on one torch thread, so its two bundles share one CPU (half each) and a
    2-core machine runs two trials at once instead of leaving a core idle."""
    if gpus_per_trial is None:
        gpus_per_trial = 1.0 if cluster_gpus > 0 else 0.0
    if eval_gpus is None:
        eval_gpus = EVAL_GPU_SHARE if eval_workers and gpus_per_trial else 0.0
    shared = (cpus_per_trial is None and eval_cpus is None and eval_workers == 1
              and not gpus_per_trial and not eval_gpus)
    if cpus_per_trial is None:
        cpus_per_trial = CPU_SHARE if shared else 1.0
    if eval_cpus is None:
        eval_cpus = CPU_SHARE if shared else 1.0
    for name, value in (("--gpus-per-trial", gpus_per_trial), ("--cpus-per-trial", cpus_per_trial),
                        ("--cpus-per-eval-worker", eval_cpus), ("--gpus-per-eval-worker", eval_gpus)):
        if value < 0 or not math.isfinite(value):
            raise SweepError(f"{name} {value}: must be a number >= 0")
    if cpus_per_trial <= 0:
        raise SweepError(f"--cpus-per-trial {cpus_per_trial}: must be > 0")
    if eval_workers < 0:
        raise SweepError(f"--eval-workers {eval_workers}: must be >= 0 (0: evaluate in the trial)")
    if eval_workers and eval_cpus <= 0 and eval_gpus <= 0:
        raise SweepError("an evaluation worker needs some CPU or GPU (--cpus-per-eval-worker)")
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise SweepError(f"--gpus-per-trial {gpus_per_trial}: above 1, a whole number of GPUs")
    return Resources(gpus_per_trial, cpus_per_trial, eval_workers, eval_cpus, eval_gpus)


# ----------------------------------------------------------------------------------------------
# The run folder


def _dict_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``a.b: 3 -> 4`` for every leaf that differs between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _dict_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two manifests, in words (for refusing a changed grid on resume).

    A model whose training config changed keeps its label and gets another model id: it is
    described by the config fields that changed, not as one trial gone and another new."""
    lines = []
    old_t, new_t = old.get("trials", {}), new.get("trials", {})
    old_by_label = {t["label"]: mid for mid, t in old_t.items() if mid not in new_t}
    paired: set[str] = set()
    for mid in sorted(set(new_t) - set(old_t)):
        label = new_t[mid]["label"]
        was = old_by_label.get(label)
        if was is not None and "config" in old_t[was] and "config" in new_t[mid]:
            paired.add(was)
            diff = _dict_diff(old_t[was]["config"], new_t[mid]["config"])
            lines.append(f"trial {label}: training config changed ({'; '.join(diff)}), "
                         f"model id {was} -> {mid}")
        else:
            lines.append(f"new trial {label} ({mid})")
    for mid in sorted(set(old_t) - set(new_t) - paired):
        lines.append(f"trial {old_t[mid]['label']} ({mid}) is gone")
    for mid in sorted(set(old_t) & set(new_t)):
        for key in ("label", "groups", "attacks"):
            if old_t[mid].get(key) != new_t[mid].get(key):
                lines.append(f"trial {mid}: {key} {old_t[mid].get(key)} -> {new_t[mid].get(key)}")
    def without_models(groups: Any) -> Any:
        return {g: {k: v for k, v in spec.items() if k != "models"} for g, spec in (groups or {}).items()}

    lines += [f"groups.{d}" for d in _dict_diff(without_models(old.get("groups")),
                                                without_models(new.get("groups")))]
    lines += [f"evaluation.{d}" for d in _dict_diff(old.get("evaluation"), new.get("evaluation"))]
    if not lines and old.get("shards") != new.get("shards"):
        lines.append("the evaluation shards differ")
    return lines


def prepare_run(plan: SweepPlan, grid_text: str, run_dir: Path, *, settings: dict[str, Any],
                command: str | None = None) -> RunDir:
    """Create a new run folder: run.json, grid.yaml (the snapshot) and manifest.json."""
    rd = RunDir(run_dir)
    if rd.path.exists() and any(rd.path.iterdir()):
        hint = f"; continue it with `mpo sweep --resume {rd.path}`" if rd.exists() else ""
        raise SweepError(f"{rd.path} already exists and is not empty{hint}, or choose another --name")
    rd.path.mkdir(parents=True, exist_ok=True)
    info = run_record(rd.path.name, command=command)
    info["sweep"] = settings
    write_json_atomic(rd.run_file, info)
    write_text_atomic(rd.grid_file, grid_text)
    for file in plan.suite_files.values():  # the run folder is self-contained: resume needs them
        (rd.suite_dir).mkdir(exist_ok=True)
        write_text_atomic(rd.suite_dir / file.name, file.read_text())
    write_json_atomic(rd.manifest_file, plan.manifest())
    return rd


def record_sweep(rd: RunDir, *, started: float, finished: float, resume: bool,
                 records: dict[str, Any]) -> dict[str, Any]:
    """Append one driver invocation (start, end, wall seconds, trial states) to run.json's
    ``sweeps`` list, so a run's snapshot says how long it took (a resume adds an entry)."""
    import datetime as dt

    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")

    info = read_json(rd.run_file)
    states: dict[str, int] = {}
    for record in records.values():
        state = str(record.get("state") or "pending")
        states[state] = states.get(state, 0) + 1
    entry = {"started": iso(started), "finished": iso(finished),
             "wall_seconds": round(finished - started, 1), "resume": resume,
             "trial_states": dict(sorted(states.items()))}
    info["sweeps"] = [*info.get("sweeps", []), entry]
    write_json_atomic(rd.run_file, info)
    return entry


def load_run(run_dir: Path, *, grid: str | None = None) -> tuple[RunDir, SweepPlan, dict[str, Any]]:
    """An existing run folder's plan (from its grid snapshot), checked against its manifest and,
    when ``grid`` is given, against that grid: a changed grid is refused with the differences."""
    rd = RunDir(run_dir)
    rd.check()
    snapshot = parse_grid(load_yaml(rd.grid_file, error=RunDirError, what="grid snapshot"),
                          source=str(rd.grid_file))
    plan = expand_grid(snapshot, source=str(rd.grid_file), suite_dir=rd.suite_dir)
    saved = rd.manifest()
    changes = describe_changes(saved, plan.manifest())
    if changes:
        raise SweepError(
            f"{rd.grid_file} no longer expands to the run's manifest.json, so the run cannot be "
            "resumed safely (its trials and results belong to the old grid):\n  - "
            + "\n  - ".join(changes) + "\nStart a new run (another --name) for the new grid."
        )
    if grid is not None:
        new_grid, _text, path = load_grid_text(grid)
        new_plan = expand_grid(new_grid, source=str(path), grid_dir=path.parent)
        changes = describe_changes(saved, new_plan.manifest())
        if changes:
            raise SweepError(
                f"{path} differs from the grid this run was started with ({rd.grid_file}); "
                "resuming would mix two grids' trials and results:\n  - "
                + "\n  - ".join(changes)
                + f"\nResume with the original grid (`mpo sweep --resume {rd.path}`), or start "
                "a new run (another --name) for the changed grid."
            )
    return rd, plan, rd.run().get("sweep", {})


def settings_for(res: Resources, *, max_failures: int, shard_retries: int, data_dir: str | None,
                 download: bool) -> dict[str, Any]:
    """The sweep settings run.json records. ``data_dir`` is kept as the user gave it (None: the
    default root), never resolved to this machine's absolute path; the driver resolves it when
    it starts the trials (``trial_data_dir``)."""
    return {
        "resources": asdict(res),
        "max_failures": max_failures,
        "trial_settings": {
            "data_dir": data_dir,
            "download": download,
            "shard_retries": shard_retries,
        },
        "faults": _faults.from_env(),
    }


def trial_data_dir(data_dir: str | None) -> str:
    """The absolute data root the trials use (they run in other working folders)."""
    from jobs.data import resolve_data_dir

    return str(resolve_data_dir(data_dir).resolve())


def preflight_data(plan: SweepPlan, data_dir: str | None, *, download: bool) -> None:
    """Refuse, before Ray starts, a sweep whose datasets are not under the data root (unless the
    trials may download them): the ``DataError`` names the root, the files and the fix."""
    from jobs.data import require_dataset

    if download:
        return
    for dataset, ev in plan.grid.evaluation.items():
        if dataset not in plan.suites:
            continue
        n_train = [t.config["dataset"].get("n_train") for t in plan.trials.values()
                   if t.dataset == dataset]
        require_dataset(dataset, data_dir, n_test=ev.n_test,
                        n_train=max((n for n in n_train if n is not None), default=None))


def summary_table(plan: SweepPlan, records: dict[str, Any]) -> Table:
    table = Table(title="results")
    for col in ("model", "id", "state", "clean", "group: union / average", "time"):
        table.add_column(col, overflow="fold", no_wrap=col in ("model", "state"))
    for mid, t in plan.trials.items():
        rec = records.get(mid) or {}
        summ = rec.get("summary") or {}
        groups = summ.get("groups") or {}
        cells = "  ".join(f"{g}: {v['union']:.3f} / {v['average']:.3f}" for g, v in groups.items())
        clean = summ.get("clean")
        wall = rec.get("wall_seconds")
        table.add_row(t.label, mid, rec.get("state", "pending"),
                      "" if clean is None else f"{clean:.3f}", cells,
                      "" if wall is None else f"{wall:.0f} s")
    return table

