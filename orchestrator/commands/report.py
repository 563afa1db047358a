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
@click.option("--quiet", is_flag=True, help="Do not print the tables to the console.")
def report(run_dir: Path, out_dir: Path | None, formats: str, quiet: bool) -> None:
    """Report Tables 1-3, OPT bounds, gradient-masking flags and Figure-1 plots of RUN_DIR.

    Reads only the per-example results (RUN_DIR/results/*/*.parquet) and, when present,
    manifest.json, run.json and trials/*/trial.json. Missing trials and shards are listed.
    """
    from rich.console import Console

    from analysis import render
    from analysis.loading import RunFolderError, load_results
    from analysis.report import build_report, parse_formats, write_figures

    console = Console()
    try:
        fmts = parse_formats(formats)
        rs = load_results(run_dir)
    except RunFolderError as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--format") from exc
    out = out_dir if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rep = build_report(rs)
    written = write_figures(rep, out)
    writers = {"md": render.write_markdown, "tex": render.write_latex,
               "html": render.write_html, "csv": render.write_csv}
    for fmt in fmts:
        written += writers[fmt](rep, out)
    if not quiet:
        render.print_console(rep, console)
    console.print(f"wrote {len(written)} files to {out}")
    for path in written:
        console.print(f"  {path}", highlight=False)
