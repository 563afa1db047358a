"""``mpo audit RUN_DIR``: the strength audit of a run folder, in this process (no Ray).

For each model of a sweep's or an ``mpo eval``'s run folder (whatever suite it used, a user's own
included) it runs AutoAttack's standard version as shipped on a seeded sample of the model's test
points, for each l_p family of its groups, and records per input where AutoAttack and the suite
disagree (``jobs.audit``); ``mpo report`` then shows it. Audits already on disk are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orchestrator.commands import DEVICE_OPTION, set_resume_hint
from orchestrator.commands.data import DATA_DIR_OPTION
from orchestrator.commands.train import THREADS_OPTION

if TYPE_CHECKING:
    from rich.console import Console

    from jobs.audit import AuditRequest
    from jobs.run_folder import RunFolder, TrialEntry


def _models(rf: RunFolder, wanted: tuple[str, ...]) -> list[TrialEntry]:
    """The run's models with results, or the ones named (by label or id)."""
    from jobs.errors import MpoError

    trials = [t for t in rf.manifest().trials.values() if rf.results_dir(t.model_id).is_dir()]
    if not wanted:
        return trials
    picked = [t for t in trials if t.label in wanted or t.model_id in wanted]
    unknown = sorted(set(wanted) - {t.label for t in picked} - {t.model_id for t in picked})
    if unknown:
        raise MpoError(f"--model {', '.join(unknown)}: not a model of {rf.path} with results; "
                       f"its models: {', '.join(t.label for t in trials) or 'none'}")
    return picked


def checkpoint_sources(paths: tuple[str, ...]) -> dict[str, Path]:
    """{model id: checkpoint} of the ``--checkpoint`` files (for run folders that do not record
    where a model's checkpoint is: an ``mpo eval`` folder written before mpo recorded it)."""
    from jobs.checkpoint import load_checkpoint
    from jobs.config import make_train_config

    out = {}
    for p in paths:
        path = Path(p) / "checkpoint.pt" if Path(p).is_dir() else Path(p)
        config = make_train_config(load_checkpoint(path)["config"], source=f"{path} (embedded config)")
        out[config.model_id()] = path
    return out


def audit_one(rf: RunFolder, trial: TrialEntry, request: AuditRequest, o: dict[str, Any],
              console: Console) -> int:
    """Audit one model of the run; the number of audit files it has."""
    import json

    import pyarrow.parquet as pq

    from jobs.audit import audit_model, model_source, suite_from_record
    from jobs.results import read_results
    from jobs.schema import META_SUITE

    files = sorted(rf.results_dir(trial.model_id).glob("*.parquet"))
    rows = read_results(files)
    suite, budgets = suite_from_record(
        json.loads(pq.read_schema(files[0]).metadata[META_SUITE].decode()))
    families = [f for g in trial.groups for f in suite.groups.get(g, {}).get("families", [])]
    n_test = int(rows["index"].max()) + 1
    console.print(f"[bold]{trial.label}[/bold] ({trial.model_id}): AutoAttack standard on "
                  f"{min(request.n, n_test)} of {n_test} test points, families "
                  f"{', '.join(dict.fromkeys(families)) or 'none'} ({request.budgets} budget)")
    source = o["sources"].get(trial.model_id) or model_source(rf, trial)
    paths = audit_model(source, suite, rows, request=request, run_dir=rf.path,
                        n_test=n_test, families=list(dict.fromkeys(families)), budgets=budgets,
                        data_dir=o["data_dir"], device=o["device"], label=trial.label)
    return len(paths)


@click.command("audit")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--n", "n", type=click.IntRange(min=1), default=100, show_default=True,
              help="Test points per model (a seeded sample of those the run evaluated).")
@click.option("--budgets", type=click.Choice(["full", "all"]), default="full", show_default=True,
              help="Audit each family at its full budget, or at every budget point of the suite.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the sample and of AutoAttack.")
@click.option("--model", "models", multiple=True,
              help="Only this model (label or id; repeatable). Default: every model with results.")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(exists=True),
              help="A model's checkpoint (file or training folder; repeatable), for a run folder "
                   "that does not record it (mpo eval folders of older mpo versions).")
@DATA_DIR_OPTION
@DEVICE_OPTION
@THREADS_OPTION
@click.pass_context
def audit(ctx: click.Context, run_dir: str, **options: Any) -> None:
    """Audit RUN_DIR's suite against AutoAttack's standard version (as shipped), per input.

    Then `mpo report RUN_DIR` shows, per model and family, how many inputs AutoAttack broke that
    the suite called robust, with an upper confidence bound.
    """
    from jobs.run_folder import RunFolder

    rf = RunFolder(Path(run_dir).resolve())
    rf.check()  # before torch's import: a mistyped folder is refused at once
    from jobs.audit import AuditRequest
    from jobs.io import check_writable
    from orchestrator.console import make_console
    from orchestrator.resources import available_cpus, set_torch_threads

    set_torch_threads(options["threads"] or available_cpus())
    console = make_console()
    check_writable(rf.audit_dir, folder=True, what="the run folder's audit/")
    request = AuditRequest(n=options["n"], budgets=options["budgets"], seed=options["seed"])
    options["sources"] = checkpoint_sources(options["checkpoints"])
    set_resume_hint(ctx, f"every finished audit is saved in {rf.audit_dir}; run the same command "
                    "again to continue")
    written = sum(audit_one(rf, t, request, options, console) for t in _models(rf, options["models"]))
    console.print(f"audit: {written} files in {rf.audit_dir} (report: `mpo report {rf.path}`)",
                  soft_wrap=True)
