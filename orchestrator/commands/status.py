"""``mpo status RUN_DIR``: a sweep's trial and shard states, read from its run folder (no Ray)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def status(run_dir: str) -> None:
    """Trial states, shards done / failed, results files missing or corrupt, the driver, and
    where the results are (reads files; no Ray)."""
    from orchestrator import runlock
    from orchestrator.console import Col, joined, make_console, print_table
    from orchestrator.lineage import lineage_tree
    from orchestrator.runfolder import collect_status
    from orchestrator.utilisation import describe

    st = collect_status(run_dir)
    run, trials = st.run, st.trials
    console = make_console()
    cols = [Col("model"), Col("id", "id", 4), Col("groups", drop=6), Col("state"),
            Col("epoch", "num", 5), Col("shards", "num"), Col("failed", "num", 7),
            Col("attempts", "num", 8), Col("clean", "num", 2), Col("union / average"),
            Col("time", "num", 3)]
    rows = []
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
        groups = t.summary.get("groups") or {}
        cells = joined([f"{g}: {v['union']:.3f}/{v['average']:.3f}" for g, v in groups.items()],
                       console)
        clean = t.summary.get("clean")
        rows.append([t.label, t.model_id, ",".join(t.groups), t.state, f"{t.epoch}/{t.epochs}",
                     f"{t.shards_done}/{t.shards_total}", str(t.failed_shards), str(t.attempts),
                     "" if clean is None else f"{clean:.3f}", cells,
                     "" if t.wall_seconds is None else f"{t.wall_seconds:.0f} s"])
    print_table(console, cols, rows,
                title=f"{run.get('name', run_dir)} (created {run.get('created', '?')})")
    tree = lineage_tree({t.model_id: (t.label, t.parents) for t in trials},
                        title="models that start from models:",
                        notes={t.model_id: t.state for t in trials})
    if tree is not None:
        console.print(tree)
    done = sum(t.shards_done for t in trials)
    total = sum(t.shards_total for t in trials)
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) +
                  f"; shards {done}/{total}")
    for i, sweep in enumerate(run.get("sweeps") or [], 1):
        if sweep.get("utilisation"):
            console.print(f"driver run {i} ({sweep.get('started', '?')}): "
                          f"{describe(sweep['utilisation'])}", soft_wrap=True)
    for t in trials:
        if t.error:
            console.print(f"[red]{t.label} ({t.model_id})[/]: {t.error.splitlines()[0][:300]}",
                          soft_wrap=True)
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
    console.print(f"results: {root / 'results'}", soft_wrap=True)
