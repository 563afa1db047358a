"""``mpo eval CHECKPOINT --suite SUITE``: per-example evaluation in this process (no Ray).

Writes the run-folder layout the sweep writes: ``OUT/run.json`` (created once),
``OUT/manifest.json`` (merged: the groups, the model and the shards evaluated) and
``OUT/results/<model_id>/<attack>__<start>-<stop>.parquet``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orchestrator.commands import progress_bars
from orchestrator.commands.data import DATA_DIR_OPTION

if TYPE_CHECKING:
    import torch

    from jobs.config import TrainConfig
    from jobs.suite import EvalSuite


def write_run_json(out: Path, *, name: str, device: torch.device) -> None:
    """``run.json`` once per run folder (an existing one is kept)."""
    from jobs.io import run_record, write_json_atomic

    path = out / "run.json"
    if not path.exists():
        write_json_atomic(path, run_record(name, device=device))


def update_manifest(out: Path, suite: EvalSuite, config: TrainConfig, model_id: str, label: str,
                    groups: list[str], shards: list[dict[str, Any]]) -> None:
    """Merge this evaluation into ``manifest.json`` (groups, trials, shards)."""
    from jobs.io import read_json, write_json_atomic
    from orchestrator.runfolder import RunDirError

    path = out / "manifest.json"
    manifest: dict[str, Any] = {"groups": {}, "trials": {}, "shards": []}
    if path.exists():
        manifest.update(read_json(path, error=RunDirError, what="manifest"))
    for g in groups:
        spec = suite.groups[g]
        entry = manifest["groups"].setdefault(
            g, {"dataset": suite.dataset, "families": spec["families"],
                "affine": spec.get("affine", []), "models": []})
        if model_id not in entry["models"]:
            entry["models"].append(model_id)
    manifest["trials"][model_id] = {
        "label": label, "dataset": config.dataset.name, "strategy": config.strategy,
        "groups": groups, "config": config.to_dict(),
    }
    seen = {(s["model_id"], s["attack"], s["start"], s["stop"]) for s in manifest["shards"]}
    for s in shards:
        if (s["model_id"], s["attack"], s["start"], s["stop"]) not in seen:
            manifest["shards"].append(s)
    write_json_atomic(path, manifest)


def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}"


@click.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option("--suite", "suite_name", required=True,
              help="Built-in suite name (toy, mnist-mini, mnist-paper, cifar10-paper, ...; 'paper' "
                   "and 'strong' pick the checkpoint's dataset's suite) or a YAML path.")
@click.option("--n-test", type=click.IntRange(min=1), default=None,
              help="Evaluate the first N test points. Default: the suite's n_test.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder. Default: runs/eval/<suite>.")
@DATA_DIR_OPTION
@click.option("--download/--no-download", default=False, show_default=True,
              help="Download the dataset when it is missing.")
@click.option("--shard-size", type=click.IntRange(min=1), default=100, show_default=True,
              help="Test points per results file.")
@click.option("--attack", "attacks", multiple=True,
              help="Only this suite attack (repeatable). Default: all of them.")
@click.option("--label", default=None, help="Model label in the results (default: the config's).")
@click.option("--device", default="auto", show_default=True,
              help="auto (cuda when available), cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Inputs per attack batch.")
def eval_command(
    checkpoint: str, suite_name: str, n_test: int | None, out_dir: str | None,
    data_dir: str | None, download: bool, shard_size: int, attacks: tuple[str, ...],
    label: str | None, device: str, batch_size: int,
) -> None:
    """Evaluate CHECKPOINT (a checkpoint.pt or a training folder) against an attack suite.

    Shards already evaluated with the same content are skipped, so re-running is cheap.
    """
    from rich.console import Console
    from rich.table import Table

    from jobs.checkpoint import CheckpointFormatError
    from jobs.evaluation import evaluate, plan_shards
    from jobs.results import summarize
    from jobs.suite import check_compatible, load_suite
    from jobs.training import load_trained, resolve_device

    console = Console()
    ckpt = Path(checkpoint)
    if ckpt.is_dir():
        ckpt = ckpt / "checkpoint.pt"
        if not ckpt.exists():
            raise CheckpointFormatError(f"{checkpoint}: a folder without checkpoint.pt; give a "
                                        "checkpoint.pt or a training folder (mpo train --out)")
    _, config, _ = load_trained(ckpt, device="cpu")
    suite = load_suite(suite_name, dataset=config.dataset.name)
    for name in attacks:
        suite.attack(name)
    dev = resolve_device(device)
    check_compatible(config, suite, source=f"checkpoint {ckpt}")
    model_id = config.model_id()
    label = label or config.label or model_id
    n = n_test or suite.n_test
    out = Path(out_dir) if out_dir else Path("runs") / "eval" / suite.name
    names = list(attacks) or [a.name for a in suite.attacks]
    shards = plan_shards(n, shard_size)
    groups = list(suite.groups)
    console.print(
        f"[bold]{label}[/bold] ({model_id}) vs suite [cyan]{suite.name}[/cyan]: "
        f"{len(names)} attacks x {len(shards)} shards of the first {n} test points, "
        f"device {dev} -> {out}"
    )

    progress = progress_bars(console)
    task = progress.add_task("attacks", total=len(names) * len(shards))

    def on_shard(name: str, start: int, stop: int, path: Path) -> None:
        progress.update(task, advance=1, description=f"{name} [{start}, {stop})")

    out.mkdir(parents=True, exist_ok=True)
    write_run_json(out, name=out.name, device=dev)
    with progress:
        paths = evaluate(
            ckpt, suite, n_test=n, out_dir=out, shard_size=shard_size, data_dir=data_dir,
            device=dev, model_label=label, groups=groups, download=download,
            attacks=names, batch_size=batch_size, on_shard=on_shard,
        )
    update_manifest(
        out, suite, config, model_id, label, groups,
        [{"model_id": model_id, "attack": a, "start": s, "stop": e}
         for a in names for s, e in shards],
    )

    summary = summarize(paths, suite.groups).get(model_id)
    if summary is None:
        console.print("no full-budget results to summarise")
        return
    fam_table = Table(title=f"{label}: accuracy (%) on {summary['n']} test points")
    fams = list(summary["families"])
    for col in ("clean", *fams):
        fam_table.add_column(col, justify="right")
    fam_table.add_row(_pct(summary["clean"]), *[_pct(summary["families"][f]) for f in fams])
    console.print(fam_table)
    grp_table = Table(title="groups")
    for col in ("group", "families", "union", "average", "affine"):
        grp_table.add_column(col, justify="right" if col in ("union", "average") else "left")
    for g, s in summary["groups"].items():
        affine = ", ".join(f"{f} {_pct(v)}" for f, v in s["affine"].items()) or "-"
        grp_table.add_row(g, ", ".join(s["families"]), _pct(s["union"]), _pct(s["average"]), affine)
    console.print(grp_table)
    console.print(f"results: [green]{out / 'results' / model_id}[/green] ({len(paths)} files)")
