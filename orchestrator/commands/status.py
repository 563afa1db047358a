"""``mpo status RUN_DIR``: a sweep's trial and shard states, read from its run folder (no Ray)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def status(run_dir: str) -> None:
    """Trial states, shards done / failed, results files missing or corrupt, the driver, and
    where the results are (reads files; no Ray)."""
    from rich.console import Console
    from rich.table import Table

    from orchestrator import runlock
    from orchestrator.runfolder import collect_status

    st = collect_status(run_dir)
    run, trials = st.run, st.trials
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
    root = Path(run_dir).resolve()
    for p in st.problems:
        console.print(f"[red]{p.path.relative_to(root)}[/]: {p.reason}", soft_wrap=True)
    if st.driver_running:
        console.print(f"driver: running, {runlock.describe(st.driver)}", soft_wrap=True)
    else:
        if st.driver:
            console.print(f"driver: none running (the last one, {runlock.describe(st.driver)}, "
                          "is gone)", soft_wrap=True)
        if st.problems or counts.get("done", 0) < len(trials):
            console.print(f"continue with: mpo sweep --resume {root}", soft_wrap=True)
    console.print(f"results: {root / 'results'}")
