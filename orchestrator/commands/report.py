"""`mpo report RUN_DIR`: tables, figures and a self-contained HTML report of a run folder."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder (default RUN_DIR/report).")
@click.option("--format", "formats", default="md,tex,html,csv", show_default=True,
              help="Comma-separated formats: md, tex, html, csv.")
@click.option("--snapshot", "snapshot", type=click.Path(path_type=Path), default=None,
              help="Instead of --out/--format: write a small, committable snapshot to this folder "
                   "(report.md, summary.md, PNG figures, run.json, grid.yaml, suites/; no "
                   "checkpoints, no per-example results).")
@click.option("--readme", "readme", type=click.Path(path_type=Path, dir_okay=False),
              default=None,
              help="With --snapshot: also put its summary.md, verbatim, into this file between "
                   "the snapshot's marker comments (the error message shows them).")
@click.option("--quiet", is_flag=True, help="Do not print the tables to the console.")
def report(run_dir: Path, out_dir: Path | None, formats: str, snapshot: Path | None,
           readme: Path | None, quiet: bool) -> None:
    """Report Tables 1-3, OPT bounds, gradient-masking flags and Figure-1 plots of RUN_DIR.

    Reads only the per-example results (RUN_DIR/results/*/*.parquet) and, when present,
    manifest.json, run.json and trials/*/trial.json. Missing trials and shards are listed.
    Example: `mpo report mpo-runs/mnist-mini --snapshot analysis/results/mnist-mini
    --readme README.md`.
    """
    from jobs.run_folder import check_run_dir

    check_run_dir(run_dir)  # before the analysis imports: a mistyped folder is refused at once
    from analysis import render
    from analysis.loading import load_results
    from analysis.report import parse_formats, update_readme, write_report, write_snapshot
    from jobs.io import check_writable
    from orchestrator.console import make_console

    console = make_console()
    if snapshot is not None and out_dir is not None:
        raise click.UsageError("--snapshot and --out are exclusive: a snapshot is written to the "
                               "--snapshot folder")
    if readme is not None and snapshot is None:
        raise click.UsageError("--readme needs --snapshot: it copies the snapshot's summary.md")
    fmts = parse_formats(formats)
    rs = load_results(run_dir)
    check_writable(snapshot if snapshot is not None else out_dir if out_dir is not None
                   else run_dir / "report", folder=True,
                   what="--snapshot" if snapshot is not None else "--out")
    if snapshot is not None:
        rep, written = write_snapshot(rs, snapshot)
        if readme is not None:
            written.append(update_readme(readme, snapshot))
        out = snapshot
    else:
        out = out_dir if out_dir is not None else run_dir / "report"
        rep, written = write_report(rs, out, fmts)
    if not quiet:
        render.print_console(rep, console)
    console.print(f"wrote {len(written)} files to {out}")
    for path in written:
        console.print(f"  {path}", highlight=False)
