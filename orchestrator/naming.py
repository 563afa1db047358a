"""What the Ray dashboard shows of a sweep: the job's name, each trial actor's name and each
evaluation task's name.

Ray names things after the code that runs them: every trial would be an actor of class
``ImplicitFunc`` whose name is ``run_trial`` (and whose method calls are ``run_trial.train``),
every evaluation task ``evaluate_shard_task``, and the driver a job with no name. A researcher
reading the Jobs, Actors, Tasks and Cluster pages needs the model, the attack and its radius,
the inputs and the sweep instead. The strings are made here, from plain data (no Ray import):

- the job: ``job_metadata`` (``ray.init(job_config=JobConfig(metadata=...))``; the Jobs page
  shows its ``job_name`` key in the Name column);
- a trial actor: ``trial_repr`` (``orchestrator.trial_actor.MpoTrial.__repr__``; the Actors page
  shows it as the actor's repr name, and the Tasks page names the actor's method calls after it:
  ``Adv_max · 3f2a… .train``);
- an evaluation task: ``shard_task_name`` (``.options(name=...)`` per task).
"""

from __future__ import annotations

from pathlib import Path

#: separates the parts of a name (readable on the dashboard, unlikely inside a label)
SEP = " · "


def trial_repr(label: str, model_id: str) -> str:
    """A trial actor's name on the dashboard: ``Adv_max · 3f2a9c1d0e4b5a6c``."""
    return f"{label}{SEP}{model_id}"


def shard_task_name(label: str, attack: str, start: int, stop: int,
                    radius: float | None = None) -> str:
    """An evaluation task's name: ``Adv_max · linf-pgd@0.5 (ε 0.201) · inputs 0-99`` (model
    label, the suite attack with its budget point, its radius, the test inputs, both ends
    included)."""
    eps = "" if radius is None else f" (ε {radius:.3g})"
    return f"{label}{SEP}{attack}{eps}{SEP}inputs {start}-{stop - 1}"


def job_metadata(grid: str, run_dir: Path, *, trials: int, todo: int, shards: int,
                 resume: bool) -> dict[str, str]:
    """The driver job's metadata: ``job_name`` (what the Jobs page shows: the grid, the run
    folder's name, what this driver runs) and the same facts as separate keys for
    ``ray list jobs --detail`` and the Jobs REST API."""
    what = f"{todo} of {trials} trials" if resume else f"{trials} trials, {shards} shards"
    verb = "resume" if resume else "sweep"
    return {
        "job_name": f"mpo {verb} {grid}{SEP}{run_dir.name}{SEP}{what}",
        "mpo_grid": grid,
        "mpo_sweep": run_dir.name,
        "mpo_run_dir": str(run_dir),
        "mpo_trials": str(trials),
        "mpo_trials_to_run": str(todo),
        "mpo_shards": str(shards),
        "mpo_resume": str(resume).lower(),
    }
