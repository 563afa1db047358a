"""``mpo status RUN_DIR``: a sweep's trial and shard states, read from its run folder (no Ray)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def status(run_dir: str) -> None:
    """Trial states, shards done / failed, and where the results are (reads files; no Ray)."""
    from rich.console import Console
    from rich.table import Table

    from orchestrator.runfolder import collect_status

    run, trials = collect_status(run_dir)
    console = Console()
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
