"""``mpo sweep``: train and evaluate every model of a grid on Ray Tune.

The command runs in named steps: check the options; load the plan (or the run to resume); print
it and stop (``--dry-run``); to resume, take the run folder's lock and find the trials to run
again (``orchestrator.runfolder.prepare_resume``); check the data; connect to Ray; fill in the
resources and check them against the cluster; prepare a new run folder and take its lock; run;
summarise. Ray is imported only once a sweep runs (``--help`` and ``--dry-run`` import none).
The Ray side is ``orchestrator.tune_driver``.

One driver per run folder: a second one is refused, naming the first (``orchestrator.runlock``).
While the trials run, SIGINT or SIGTERM ends the driver at once with one line that says how to
resume, and exit status 128 + the signal's number (Ctrl+C earlier, e.g. while Ray starts, ends
it the same way).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from jobs.run_folder import RunFolder
    from orchestrator.plan import SweepPlan
    from orchestrator.resources import Cluster
    from orchestrator.runfolder import SweepSettings

DEFAULT_STORAGE = "mpo-runs"
#: a run folder's name (``--name``): one path component inside the storage folder
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")

#: the resource options: CLI parameter -> field of ``Resources`` (as run.json saves them)
RESOURCE_OPTIONS = {"gpus_per_trial": "gpus_per_trial", "cpus_per_trial": "cpus_per_trial",
                    "eval_workers": "eval_workers", "cpus_per_eval_worker": "eval_cpus",
                    "gpus_per_eval_worker": "eval_gpus"}

#: resources asked for, by ``Resources`` field (None: the default, filled by make_resources)
Requested = dict[str, float | int | None]


@dataclass(frozen=True)
class Start:
    """What a sweep starts from: its plan and, to resume, the run folder and its saved settings
    (run.json's ``sweep``); for a new run, the grid file's text (the run folder's snapshot)."""

    plan: SweepPlan
    grid_text: str = ""
    run: RunFolder | None = None
    saved: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# The steps


def check_options(grid: str | None, resume_dir: str | None, storage: str | None,
                  name: str | None, max_failures: int, shard_retries: int) -> None:
    if grid is None and resume_dir is None:
        raise click.UsageError("give a GRID (e.g. `mpo sweep toy`; `mpo grids` lists them) or "
                               "--resume RUN_DIR")
    if resume_dir is not None and (storage or name):
        raise click.UsageError("--resume RUN_DIR names the run folder; drop --storage/--name")
    if storage and "://" in storage:
        raise click.UsageError(
            f"--storage {storage}: the run folder must be a filesystem path that every node sees "
            "at the same place (trials write checkpoints and parquet shards into it directly); "
            "mount the bucket (e.g. mountpoint-s3, gcsfuse) or use NFS/EFS, and pass that path"
        )
    if max_failures < 0 or shard_retries < 0:
        raise click.UsageError("--max-failures and --shard-retries must be >= 0")
    if name is not None and (not NAME_RE.match(name) or name in (".", "..")):
        raise click.UsageError(f"--name {name!r}: a run folder's name, inside --storage: letters, "
                               "digits and . _ - only, not starting with a dot (no / or ..)")


def check_trackers(mlflow_uri: str | None, wandb_project: str | None) -> None:
    """Before Ray starts: the trackers asked for have their packages, and W&B can log (a key,
    a login, or offline mode); else one ``Error:`` line that says what to install or set."""
    for option, value, module, package in (("--mlflow", mlflow_uri, "mlflow", "mlflow-skinny"),
                                            ("--wandb", wandb_project, "wandb", "wandb")):
        if value is not None and not _installed(module):
            raise click.UsageError(f"{option} needs the {module} package: pip install "
                                   f"'mpo[{module}]' (or pip install {package})")
    if mlflow_uri is not None and not mlflow_uri.strip():
        raise click.UsageError("--mlflow URI: give a tracking URI (http://HOST:5000, "
                               "sqlite:///mlflow.db, file:///abs/mlruns, or a folder)")
    if wandb_project is not None:
        _check_wandb(wandb_project)


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules: blocked
        return False


def _wandb_key() -> bool:
    """Whether W&B has an API key (WANDB_API_KEY, `wandb login`), checked for its form only,
    not online."""
    import wandb

    try:
        return bool(wandb.login(prompt=False, verify=False))
    except TypeError:  # a wandb without login(prompt=...): Ray's own check
        wandb.ensure_configured()
        return bool(getattr(wandb.api, "api_key", None))
    except Exception as err:  # a malformed key: W&B says what is wrong with it
        raise click.UsageError(f"--wandb: {err}") from None


def _check_wandb(project: str) -> None:
    if not project.strip() or "/" in project:
        raise click.UsageError(f"--wandb {project!r}: give a W&B project name (no '/'; the "
                               "entity is WANDB_ENTITY's or your login's)")
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return
    if not _wandb_key():
        raise click.UsageError("--wandb: no W&B API key: run `wandb login`, set WANDB_API_KEY, "
                               "or set WANDB_MODE=offline to keep the runs on disk (`wandb sync` "
                               "uploads them later)")


def load_start(grid: str | None, resume_dir: str | None) -> Start:
    """The grid's plan, or the plan of the run to resume (checked against ``grid`` if given)."""
    from orchestrator.plan import load_plan
    from orchestrator.runfolder import load_run

    if resume_dir is not None:
        rd, plan, saved = load_run(Path(resume_dir).resolve(), grid=grid)
        return Start(plan, run=rd, saved=saved)
    plan, text, _path = load_plan(grid)
    return Start(plan, grid_text=text)


def requested_resources(options: dict[str, float | int | None], ctx: click.Context,
                        saved: dict[str, Any]) -> Requested:
    """The resource options (by CLI parameter) as given; to resume, the run's saved resources
    where an option is not given again."""
    old = saved.get("resources", {})
    given = {p for p in options
             if ctx.get_parameter_source(p) != click.core.ParameterSource.DEFAULT}
    return {name: options[param] if param in given else old.get(name, options[param])
            for param, name in RESOURCE_OPTIONS.items()}


def print_plan(plan: SweepPlan, requested: Requested, console: Console) -> None:
    """``--dry-run``: the trials, groups and what each trial would reserve (GPU auto is shown
    as for a cluster without GPUs)."""
    from orchestrator.console import Col, print_table
    from orchestrator.lineage import lineage_tree
    from orchestrator.resources import make_resources

    gpus = requested["gpus_per_trial"]
    res = make_resources(**{**requested, "gpus_per_trial": gpus or 0.0}, cluster_gpus=0.0)
    gpu_note = (f"{res.gpus_per_trial:g} GPU" if gpus is not None
                else "GPU auto (1 if the cluster has GPUs, else 0; shown for 0)")
    totals = ", ".join(f"{k} {v:g}" for k, v in res.totals().items())
    cols = [Col("model"), Col("id", "id", 3), Col("groups", drop=5), Col("strategy", drop=2),
            Col("trained on", "text", 4), Col("model net", drop=7), Col("epochs", "num", 6),
            Col("eval attacks", "num", 8), Col("shards", "num", 1)]
    rows = []
    for mid, t in plan.trials.items():
        cfg = t.config
        fams = ", ".join(a["type"] for a in cfg["attacks"]) or "-"
        if cfg.get("soup"):
            fams = "soup of " + ", ".join(cfg["soup"]["labels"])
        rows.append([t.label, mid, ", ".join(t.groups), t.strategy, fams, cfg["model"]["name"],
                     str(cfg["epochs"]), str(len(t.attacks)), str(len(plan.trial_shards(mid)))])
    print_table(console, cols, rows, title=f"grid {plan.grid.name}: {len(plan.trials)} trials")
    for name, g in plan.groups.items():
        labels = [plan.trials[m].label for m in g.models]
        console.print(f"group [bold]{name}[/] ({g.dataset}): families {', '.join(g.families)}"
                      + (f", affine {', '.join(g.affine)}" if g.affine else "")
                      + f"; models {', '.join(labels)}", soft_wrap=True)
    tree = lineage_tree({m: (t.label, t.parents) for m, t in plan.trials.items()},
                        title="models that start from models (each runs once those above it "
                        "are trained):")
    if tree is not None:
        console.print(tree)
    console.print(f"per trial: {totals} ({gpu_note}); up to {len(plan.trials)} trials at once\n"
                  f"bundles: {res.bundles()}")
    console.print(f"{len(plan.shards)} evaluation shards in all")
    console.print("[bold]dry run[/]: nothing started")


def token_auth_in_use() -> bool:
    """Whether this driver's Ray connection uses token authentication. Ray decides at
    ``ray.init``: RAY_AUTH_MODE=token, or unset for a new local cluster (Ray then turns it on),
    or unset with a token saved (~/.ray/auth_token) when it finds a local cluster; disabled
    otherwise. Call it once Ray is connected."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:  # a Ray without token authentication
        return False
    return bool(is_token_auth_enabled())


def dashboard_line(url: str, *, token: bool) -> str:
    """The dashboard's address, and how to get its token when the cluster uses one."""
    return f"Ray dashboard: {url}" + (" (token authentication: `ray get-auth-token` prints "
                                      "the token)" if token else "")


def announce(cluster: Cluster, console: Console) -> None:
    cpus, gpus = cluster.resources.get("CPU", 0), cluster.resources.get("GPU", 0)
    where = (f"started a local Ray cluster ({cpus:g} CPU, {gpus:g} GPU)" if cluster.started_here
             else f"joined the Ray cluster at {cluster.address} ({cpus:g} CPU, {gpus:g} GPU)")
    console.print(where, soft_wrap=True)
    if cluster.dashboard_url:
        console.print(dashboard_line(cluster.dashboard_url, token=token_auth_in_use()),
                      soft_wrap=True)


def run_path(start: Start, storage: str | None, name: str | None) -> Path:
    """The run folder: the one resumed, or ``STORAGE/NAME`` (default
    ``./mpo-runs/GRID-YYYYmmdd-HHMMSS``)."""
    if start.run is not None:
        return start.run.path
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(storage or DEFAULT_STORAGE).resolve() / (name or f"{start.plan.grid.name}-{stamp}")


def new_run_folder(start: Start, path: Path, settings: SweepSettings) -> RunFolder:
    """A new run folder at ``path`` (``run_path``)."""
    from jobs.io import command_line
    from orchestrator.runfolder import prepare_run

    return prepare_run(start.plan, start.grid_text, path, settings=settings,
                       command=command_line())


def hold(rd: RunFolder, stack: contextlib.ExitStack, console: Console) -> None:
    """Hold the run folder's driver lock until ``stack`` closes; say whose stale lock this
    driver took over, if any."""
    from jobs.io import command_line
    from orchestrator import runlock

    lock = stack.enter_context(runlock.acquire(rd.path, command=command_line()))
    if lock.previous:
        console.print(f"[yellow]notice[/]: took over {lock.path} from a driver that is gone: "
                      f"{runlock.describe(lock.previous)}", soft_wrap=True)


def resume_todo(start: Start, console: Console) -> list[str]:
    """The trials a resumed run runs again; names the results files found missing or corrupt
    (set aside as ``*.corrupt``: their shards are computed again)."""
    from orchestrator.runfolder import prepare_resume

    assert start.run is not None
    todo, problems = prepare_resume(start.run, start.plan)
    for p in problems:
        console.print(f"[yellow]{p.path.relative_to(start.run.path)}[/]: {p.reason}; "
                      "its shard is computed again", soft_wrap=True)
    total = len(start.plan.trials)
    console.print(f"resuming {start.run.path}: {total - len(todo)} of {total} trials finished, "
                  f"{len(todo)} to run", soft_wrap=True)
    return todo


def interrupted(err: KeyboardInterrupt, rd: RunFolder | None) -> str:
    """The one line an interrupted driver leaves."""
    name = str(err) or "SIGINT"
    if rd is None:
        return f"interrupted ({name}) before the run folder was made; nothing to resume"
    return (f"interrupted ({name}); everything finished is saved. Resume with: "
            f"mpo sweep --resume {rd.path}")


def summary_table(plan: SweepPlan, records: dict[str, dict[str, Any]],
                  console: Console) -> Table:
    """The results of every trial, fitted to the console (one line per group's results)."""
    from orchestrator.console import Col, fitted_table, joined

    cols = [Col("model"), Col("id", "id", 2), Col("state"), Col("clean", "num", 1),
            Col("group: union / average"), Col("time", "num", 3)]
    rows = []
    for mid, t in plan.trials.items():
        rec = records.get(mid) or {}
        summ = rec.get("summary") or {}
        groups = summ.get("groups") or {}
        cells = joined([f"{g}: {v['union']:.3f} / {v['average']:.3f}" for g, v in groups.items()],
                       console)
        clean = summ.get("clean")
        wall = rec.get("wall_seconds")
        rows.append([t.label, mid, rec.get("state", "pending"),
                     "" if clean is None else f"{clean:.3f}", cells,
                     "" if wall is None else f"{wall:.0f} s"])
    return fitted_table(cols, rows, width=console.width, title="results")


def summarise(plan: SweepPlan, rd: RunFolder, records: dict[str, dict[str, Any]],
              console: Console) -> None:
    """The results table; a sweep with unfinished trials ends with an error that says how to
    look at them and resume."""
    from orchestrator.utilisation import describe

    console.print(summary_table(plan, records, console))
    sweeps = rd.run().get("sweeps") or []
    if sweeps and sweeps[-1].get("utilisation"):
        console.print(f"this driver run: {describe(sweeps[-1]['utilisation'])}", soft_wrap=True)
    bad = [mid for mid, r in records.items() if r.get("state") != "done"]
    console.print(f"results: {rd.path / 'results'}  (report: `mpo report {rd.path}`)",
                  soft_wrap=True)
    if (rd.path / "tensorboard").is_dir():
        console.print(f"TensorBoard: tensorboard --logdir {rd.path / 'tensorboard'}",
                      soft_wrap=True)
    if bad:
        raise click.ClickException(
            f"{len(bad)} of {len(records)} trials did not finish ({', '.join(bad)}); see "
            f"`mpo status {rd.path}`, then `mpo sweep --resume {rd.path}`"
        )


# ----------------------------------------------------------------------------------------------
# The command


@click.command()
@click.argument("grid", required=False)
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue an interrupted sweep from its run folder (finished trials and "
              "existing shards are not redone).")
@click.option("--dry-run", is_flag=True, help="Print the trials and the resources they would "
              "reserve; start nothing.")
@click.option("--address", default=None, help="Ray cluster to join (e.g. auto). Default: start "
              "a local cluster for this run (dashboard on 127.0.0.1).")
@click.option("--storage", default=None, help=f"Folder for run folders (default ./{DEFAULT_STORAGE}); "
              "on a multi-node cluster a shared filesystem mounted at the same path on every node.")
@click.option("--name", default=None, help="Run folder name (default GRID-YYYYmmdd-HHMMSS).")
@click.option("--gpus-per-trial", type=click.FloatRange(min=0), default=None,
              help="GPUs for a trial's training (default: 1 if the cluster has GPUs, else 0).")
@click.option("--cpus-per-trial", type=click.FloatRange(min=0, min_open=True), default=None,
              help="CPUs for a trial's training (default 1; 0.5 for a CPU-only trial with one "
              "evaluation worker: it trains or evaluates, never both, so the two bundles share "
              "one CPU).")
@click.option("--eval-workers", type=click.IntRange(min=0), default=1, show_default=True,
              help="Placement-group bundles a trial reserves for its evaluation tasks "
              "(0: evaluate inside the trial, one shard at a time).")
@click.option("--cpus-per-eval-worker", type=click.FloatRange(min=0, min_open=True),
              default=None,
              help="CPUs per evaluation worker (default 1; 0.5 as for --cpus-per-trial).")
@click.option("--gpus-per-eval-worker", type=click.FloatRange(min=0), default=None,
              help="GPU fraction per evaluation worker (default 0.5 when trials use GPUs).")
@click.option("--max-failures", type=click.IntRange(min=0), default=2, show_default=True,
              help="Restarts of a failed trial (from its last checkpoint).")
@click.option("--shard-retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Retries of an evaluation task whose worker died.")
@click.option("--num-cpus", type=click.IntRange(min=1), default=None,
              help="CPUs of the local cluster started for the run (default: all).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, envvar="MPO_DATA_DIR",
              show_envvar=True, help="Data root (default ~/.cache/mpo/data).")
@click.option("--download/--no-download", default=False, help="Let trials download datasets.")
@click.option("--mlflow", "mlflow_uri", metavar="URI", default=None,
              help="Also log every model to MLflow at this tracking URI (http://HOST:5000, "
              "sqlite:///mlflow.db, file:///abs/mlruns or a folder); experiment "
              "MLFLOW_EXPERIMENT_NAME or mpo-GRID. Needs mpo[mlflow].")
@click.option("--wandb", "wandb_project", metavar="PROJECT", default=None,
              help="Also log every model to this Weights & Biases project (WANDB_MODE=offline "
              "keeps the runs on disk). Needs mpo[wandb].")
@click.pass_context
def sweep(ctx: click.Context, grid: str | None, resume_dir: str | None, dry_run: bool,
          address: str | None, storage: str | None, name: str | None, max_failures: int,
          shard_retries: int, num_cpus: int | None, data_dir: str | None, download: bool,
          mlflow_uri: str | None, wandb_project: str | None,
          **resource_options: float | int | None) -> None:
    """Train and evaluate every model of GRID (a shipped grid name or a YAML file) on Ray Tune.

    One trial per distinct model: it trains (resuming from its checkpoint after a failure),
    then evaluates as parallel Ray tasks in the resources it reserved, writing parquet results
    under the run folder (--storage/--name). Examples: `mpo sweep toy`,
    `mpo sweep paper-grid --dry-run`, `mpo sweep --resume mpo-runs/toy-20250101-120000`.
    """
    # resource_options: the five resource options (--gpus-per-trial ... --gpus-per-eval-worker)
    from orchestrator.console import make_console

    console = make_console()
    check_options(grid, resume_dir, storage, name, max_failures, shard_retries)
    trackers = {"mlflow_uri": mlflow_uri, "wandb_project": wandb_project}
    if not dry_run:
        check_trackers(**trackers)
    start = load_start(grid, resume_dir)
    requested = requested_resources(resource_options, ctx, start.saved)
    if dry_run:
        print_plan(start.plan, requested, console)
        return
    if start.run is None:
        from jobs.io import check_writable

        check_writable(Path(storage or DEFAULT_STORAGE), folder=True, what="--storage",
                       create=False)
    with contextlib.ExitStack() as stack:
        todo = list(start.plan.trials)
        if start.run is not None:
            hold(start.run, stack, console)
            todo = resume_todo(start, console)
        rd, records = run(start, todo, requested, stack, console, address=address,
                          storage=storage, name=name, num_cpus=num_cpus, data_dir=data_dir,
                          download=download, max_failures=max_failures,
                          shard_retries=shard_retries, trackers=trackers)
    summarise(start.plan, rd, records, console)


def run(start: Start, todo: list[str], requested: Requested, stack: contextlib.ExitStack,
        console: Console, *, address: str | None, storage: str | None, name: str | None,
        num_cpus: int | None, data_dir: str | None, download: bool, max_failures: int,
        shard_retries: int, trackers: dict[str, str | None],
        ) -> tuple[RunFolder, dict[str, dict[str, Any]]]:
    """Check the data, connect to Ray, settle the resources, make (and lock) the run folder of
    a new run, and run the trials ``todo`` with the ``trackers`` (``--mlflow``, ``--wandb``);
    (the run folder, every trial's trial.json). A signal ends it with one line on stderr and
    exit status 128 + the signal's number."""
    from orchestrator.resources import check_resources, make_resources, preflight_data
    from orchestrator.runfolder import settings_for

    if start.run is not None and not data_dir:  # the run's data root, unless given again
        data_dir = start.saved.get("trial_settings", {}).get("data_dir")
    preflight_data(start.plan, data_dir, download=download)

    from orchestrator import tune_driver
    from orchestrator.naming import job_metadata
    from orchestrator.trackers import make_trackers

    rd = start.run
    path = run_path(start, storage, name)
    job = job_metadata(start.plan.grid.name, path, trials=len(start.plan.trials), todo=len(todo),
                       shards=len(start.plan.shards), resume=start.run is not None)
    try:
        with tune_driver.session(address, num_cpus=num_cpus, job=job) as cluster:
            announce(cluster, console)
            res = make_resources(**requested, cluster_gpus=cluster.gpus())
            check_resources(res, cluster)
            settings = settings_for(res, max_failures=max_failures, shard_retries=shard_retries,
                                    data_dir=data_dir, download=download)
            if rd is None:
                rd = new_run_folder(start, path, settings)
                hold(rd, stack, console)
            console.print(f"run folder: {rd.path} ({len(start.plan.trials)} trials, "
                          f"{len(start.plan.shards)} shards; per trial {res.bundles()})")
            callbacks = make_trackers(start.plan, rd.path, **trackers)
            records = tune_driver.run_sweep(start.plan, rd, settings, todo=todo,
                                            resume=start.run is not None, console=console,
                                            callbacks=callbacks)
    except KeyboardInterrupt as err:
        click.echo(interrupted(err, rd), err=True)
        raise click.exceptions.Exit(128 + getattr(err, "signum", signal.SIGINT)) from None
    return rd, records
