"""``mpo sweep``, ``mpo grids`` and ``mpo status``. Ray is imported only when a sweep runs."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import click

DEFAULT_STORAGE = "mpo-runs"


def _console():
    from rich.console import Console

    return Console()


# ----------------------------------------------------------------------------------------------
# mpo grids


@click.group(invoke_without_command=True)
@click.pass_context
def grids(ctx: click.Context) -> None:
    """List the shipped grids with their trial counts (`mpo grids show NAME` prints one)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from orchestrator.grid import GridError, builtin_grid_names, builtin_grid_path, load_plan

    table = Table(title="shipped grids (mpo sweep NAME)")
    for col in ("name", "trials", "groups", "shards", "description"):
        table.add_column(col, overflow="fold", no_wrap=col in ("model", "state"))
    for name in builtin_grid_names():
        try:
            plan, _, _ = load_plan(builtin_grid_path(name))
        except GridError as err:
            table.add_row(name, "-", "-", "-", f"[red]invalid: {err}[/]")
            continue
        table.add_row(name, str(len(plan.trials)), ", ".join(plan.groups), str(len(plan.shards)),
                      plan.grid.description)
    _console().print(table)


@grids.command("show")
@click.argument("name")
def grids_show(name: str) -> None:
    """Print a grid file (a shipped grid's name, or a path)."""
    from orchestrator.grid import load_grid_text

    _grid, text, path = load_grid_text(name)
    click.echo(f"# {path}")
    click.echo(text.rstrip())


# ----------------------------------------------------------------------------------------------
# mpo sweep


def _print_plan(plan, res_text: str, bundles_text: str, console) -> None:
    from rich.table import Table

    table = Table(title=f"grid {plan.grid.name}: {len(plan.trials)} trials")
    for col in ("model", "id", "groups", "strategy", "trained on", "model net", "epochs",
                "eval attacks", "shards"):
        table.add_column(col, overflow="fold", no_wrap=col in ("model", "state"))
    for mid, t in plan.trials.items():
        cfg = t.config
        fams = ", ".join(a["type"] for a in cfg["attacks"]) or "-"
        table.add_row(t.label, mid, ", ".join(t.groups), t.strategy, fams, cfg["model"]["name"],
                      str(cfg["epochs"]), str(len(t.attacks)), str(len(plan.trial_shards(mid))))
    console.print(table)
    for name, g in plan.groups.items():
        labels = [plan.trials[m].label for m in g.models]
        console.print(f"group [bold]{name}[/] ({g.dataset}): families {', '.join(g.families)}"
                      + (f", affine {', '.join(g.affine)}" if g.affine else "")
                      + f"; models {', '.join(labels)}")
    console.print(f"per trial: {res_text}\nbundles: {bundles_text}")
    console.print(f"{len(plan.shards)} evaluation shards in all")


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
@click.option("--gpus-per-trial", type=float, default=None,
              help="GPUs for a trial's training (default: 1 if the cluster has GPUs, else 0).")
@click.option("--cpus-per-trial", type=float, default=None,
              help="CPUs for a trial's training (default 1; 0.5 for a CPU-only trial with one "
              "evaluation worker: it trains or evaluates, never both, so the two bundles share "
              "one CPU).")
@click.option("--eval-workers", type=int, default=1, show_default=True,
              help="Placement-group bundles a trial reserves for its evaluation tasks "
              "(0: evaluate inside the trial, one shard at a time).")
@click.option("--cpus-per-eval-worker", type=float, default=None,
              help="CPUs per evaluation worker (default 1; 0.5 as for --cpus-per-trial).")
@click.option("--gpus-per-eval-worker", type=float, default=None,
              help="GPU fraction per evaluation worker (default 0.5 when trials use GPUs).")
@click.option("--max-failures", type=int, default=2, show_default=True,
              help="Restarts of a failed trial (from its last checkpoint).")
@click.option("--shard-retries", type=int, default=3, show_default=True,
              help="Retries of an evaluation task whose worker died.")
@click.option("--num-cpus", type=int, default=None,
              help="CPUs of the local cluster started for the run (default: all).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, envvar="MPO_DATA_DIR",
              show_envvar=True, help="Data root (default ~/.cache/mpo/data).")
@click.option("--download/--no-download", default=False, help="Let trials download datasets.")
def sweep(grid: str | None, resume_dir: str | None, dry_run: bool, address: str | None,
          storage: str | None, name: str | None, gpus_per_trial: float | None,
          cpus_per_trial: float | None, eval_workers: int, cpus_per_eval_worker: float | None,
          gpus_per_eval_worker: float | None, max_failures: int, shard_retries: int,
          num_cpus: int | None, data_dir: str | None, download: bool) -> None:
    """Train and evaluate every model of GRID (a shipped grid name or a YAML file) on Ray Tune.

    One trial per distinct model: it trains (resuming from its checkpoint after a failure),
    then evaluates as parallel Ray tasks in the resources it reserved, writing parquet results
    under the run folder (--storage/--name). Examples: `mpo sweep toy`,
    `mpo sweep paper-grid --dry-run`, `mpo sweep --resume mpo-runs/toy-20250101-120000`.
    """
    from jobs.io import command_line
    from orchestrator.grid import load_plan
    from orchestrator.runs import (
        load_run,
        make_resources,
        preflight_data,
        prepare_run,
        settings_for,
    )

    console = _console()
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
    if resume_dir is not None:
        rd, plan, saved = load_run(Path(resume_dir).resolve(), grid=grid)
    else:
        plan, text, _path = load_plan(grid)

    if dry_run:
        res = make_resources(gpus_per_trial=gpus_per_trial or 0.0, cpus_per_trial=cpus_per_trial,
                             eval_workers=eval_workers, eval_cpus=cpus_per_eval_worker,
                             eval_gpus=gpus_per_eval_worker, cluster_gpus=0.0)
        gpu_note = (f"{res.gpus_per_trial:g} GPU" if gpus_per_trial is not None
                    else "GPU auto (1 if the cluster has GPUs, else 0; shown for 0)")
        totals = ", ".join(f"{k} {v:g}" for k, v in res.totals().items())
        _print_plan(plan, f"{totals} ({gpu_note}); up to {len(plan.trials)} trials at once",
                    str(res.bundles()), console)
        console.print("[bold]dry run[/]: nothing started")
        return

    if resume_dir is not None and not data_dir:  # the run's data root, unless given again
        data_dir = saved.get("trial_settings", {}).get("data_dir")
    preflight_data(plan, data_dir, download=download)

    from orchestrator import sweep as driver

    cluster = driver.connect(address, num_cpus=num_cpus)
    try:
        if not cluster.started_here:
            console.print(f"joined the Ray cluster at {cluster.address} "
                          f"({cluster.resources.get('CPU', 0):g} CPU, "
                          f"{cluster.resources.get('GPU', 0):g} GPU)"
                          + (f"; dashboard {cluster.dashboard_url}" if cluster.dashboard_url else ""))
        else:
            console.print(f"started a local Ray cluster ({cluster.resources.get('CPU', 0):g} CPU, "
                          f"{cluster.resources.get('GPU', 0):g} GPU)")
            if cluster.dashboard_url:
                console.print(f"Ray dashboard: {cluster.dashboard_url} (token authentication: "
                              "`ray get-auth-token` prints the token)")
        cluster_gpus = max(cluster.resources.get("GPU", 0.0),
                           (cluster.max_resources or {}).get("GPU", 0.0))
        if resume_dir is not None:  # the run's saved resources, unless given again
            old = saved.get("resources", {})
            ctx = click.get_current_context()
            given = {p for p in ("gpus_per_trial", "cpus_per_trial", "eval_workers",
                                 "cpus_per_eval_worker", "gpus_per_eval_worker")
                     if ctx.get_parameter_source(p) != click.core.ParameterSource.DEFAULT}
            pick = {"gpus_per_trial": "gpus_per_trial", "cpus_per_trial": "cpus_per_trial",
                    "eval_workers": "eval_workers", "cpus_per_eval_worker": "eval_cpus",
                    "gpus_per_eval_worker": "eval_gpus"}
            values = {p: (ctx.params[p] if p in given else old.get(f, ctx.params[p]))
                      for p, f in pick.items()}
            gpus_per_trial, cpus_per_trial = values["gpus_per_trial"], values["cpus_per_trial"]
            eval_workers, cpus_per_eval_worker = values["eval_workers"], values["cpus_per_eval_worker"]
            gpus_per_eval_worker = values["gpus_per_eval_worker"]
        res = make_resources(gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial,
                             eval_workers=eval_workers, eval_cpus=cpus_per_eval_worker,
                             eval_gpus=gpus_per_eval_worker, cluster_gpus=cluster_gpus)
        driver.check_resources(res, cluster)
        settings = settings_for(res, max_failures=max_failures, shard_retries=shard_retries,
                                data_dir=data_dir, download=download)
        if resume_dir is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            run_path = Path(storage or DEFAULT_STORAGE).resolve() / (name or f"{plan.grid.name}-{stamp}")
            rd = prepare_run(plan, text, run_path, settings=settings, command=command_line())
        console.print(f"run folder: {rd.path} ({len(plan.trials)} trials, {len(plan.shards)} shards"
                      f"; per trial {res.bundles()})")
        records = driver.run_sweep(plan, rd, settings, cluster=cluster,
                                   resume=resume_dir is not None, console=console)
    finally:
        if cluster.started_here:
            import ray

            ray.shutdown()
    from orchestrator.runs import summary_table

    console.print(summary_table(plan, records))
    bad = [mid for mid, r in records.items() if r.get("state") != "done"]
    console.print(f"results: {rd.path / 'results'}  (report: `mpo report {rd.path}`)")
    if bad:
        raise click.ClickException(
            f"{len(bad)} of {len(records)} trials did not finish ({', '.join(bad)}); see "
            f"`mpo status {rd.path}`, then `mpo sweep --resume {rd.path}`"
        )


# ----------------------------------------------------------------------------------------------
# mpo status


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def status(run_dir: str) -> None:
    """Trial states, shards done / failed, and where the results are (reads files; no Ray)."""
    from rich.table import Table

    from orchestrator.rundir import collect_status

    run, trials = collect_status(run_dir)
    console = _console()
    table = Table(title=f"{run.get('name', run_dir)} (created {run.get('created', '?')})")
    for col in ("model", "id", "groups", "state", "epoch", "shards", "failed", "attempts",
                "clean", "union / average", "time"):
        table.add_column(col, overflow="fold", no_wrap=col in ("model", "state"))
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
        groups = t.summary.get("groups") or {}
        cells = "  ".join(f"{g}: {v['union']:.3f}/{v['average']:.3f}" for g, v in groups.items())
        clean = t.summary.get("clean")
        table.add_row(t.label, t.model_id, ",".join(t.groups), t.state, f"{t.epoch}/{t.epochs}",
                      f"{t.shards_done}/{t.shards_total}", str(t.failed_shards), str(t.attempts),
                      "" if clean is None else f"{clean:.3f}", cells,
                      "" if t.wall_seconds is None else f"{t.wall_seconds:.0f} s")
    console.print(table)
    done = sum(t.shards_done for t in trials)
    total = sum(t.shards_total for t in trials)
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) +
                  f"; shards {done}/{total}")
    for t in trials:
        if t.error:
            console.print(f"[red]{t.label} ({t.model_id})[/]: {t.error.splitlines()[0][:300]}")
    console.print(f"results: {Path(run_dir).resolve() / 'results'}")
