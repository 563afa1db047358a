"""``mpo bench``: the command, the table it prints and the JSON file it writes. The figures
(attack efficiency, peers, training cost, sweep overhead, GPU) are measured in ``orchestrator.bench``."""

from __future__ import annotations

import math
import shlex
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

STATUS_STYLE = {"pass": "green", "miss": "red", "info": "cyan", "skipped": "yellow",
                "error": "bold red"}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.3f}"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:,.1f} {unit}"


def finite(obj: Any) -> Any:
    """The report with non-finite floats as None (JSON has no NaN or infinity)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _times(times: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}s" for k, v in times.items())


def render(report: dict[str, Any], console: Console) -> None:
    """The figures as a rich table (one row per figure), then the machine line."""
    from rich.table import Table

    m = report["machine"]
    mode = ("quick" if report["quick"] else "full") + (", projection" if report.get("projection") else "")
    table = Table(title=f"mpo bench on {report['device']} ({mode})", show_lines=False)
    for col, kw in (("figure", {}), ("value", {"justify": "right"}), ("spread", {}),
                    ("target", {}), ("status", {}), ("median times / notes", {"overflow": "fold"})):
        table.add_column(col, **kw)
    group = None
    for f in report["figures"]:
        if f["group"] != group and group is not None:
            table.add_section()
        group = f["group"]
        spread = (f"{_fmt(f['spread'][0], f['unit'])} .. {_fmt(f['spread'][1], f['unit'])}"
                  if f.get("spread") else "")
        note = f.get("reason") or _times(f.get("times_s") or {})
        d = f.get("details") or {}
        if "success_ours" in d:
            note += f"; success ours {d['success_ours']:.2f} vs peer {d['success_peer']:.2f}"
        style = STATUS_STYLE.get(f["status"], "")
        table.add_row(f"{f['title']}\n[dim]{f['key']}[/dim]", _fmt(f.get("value"), f["unit"]),
                      spread, f.get("target") or "", f"[{style}]{f['status']}[/{style}]", note)
    console.print(table)
    s = report["summary"]
    console.print(
        f"{m['cpu']}, {m['cores']} cores, {m.get('memory_gib')} GiB"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + f"; torch {report['versions']['torch']}, ray {report['versions']['ray']}; "
        + ", ".join(f"{k} {v}" for k, v in s.items() if v)
        + f"; {report['seconds']:.0f} s"
    )


def save_report(report: dict[str, Any], out: Path) -> None:
    """Write the report; where ``out`` cannot be written any more (a disk that filled while
    measuring), keep it in the temporary folder and say where, so no figure is lost."""
    from jobs.errors import MpoError
    from jobs.io import write_json_atomic

    try:
        write_json_atomic(out, finite(report))
    except OSError as err:
        fallback = Path(tempfile.mkdtemp(prefix="mpo-bench-")) / out.name
        write_json_atomic(fallback, finite(report))
        raise MpoError(f"--out {out}: cannot write it ({err.strerror or err}); the report is "
                       f"saved in {fallback}") from None


def _command_line(ctx: click.Context) -> str:
    """The command as a user would type it, from click's parsed parameters (not ``sys.argv``,
    which is the host program's when mpo is called from Python, e.g. under pytest)."""
    parts = ["mpo", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value is False or value == param.default or not param.opts:
            continue
        parts += [param.opts[0]] if value is True else [param.opts[0], str(value)]
    return shlex.join(parts)


@click.command("bench")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="where groups 1-3 run (auto: cuda when available)")
@click.option("--quick", is_flag=True, help="small sizes and few repetitions (under 2 minutes)")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the report as JSON to this file")
@click.option("--page", "page", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="rewrite this Markdown benchmark page (e.g. orchestrator/bench/BENCHMARKS.md) "
                   "with the run's figures, the values it held before beside them")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="MNIST root (default: $MPO_DATA_DIR or ~/.cache/mpo/data)")
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True,
              help="torch CPU threads while measuring (0: torch's default); one thread keeps "
                   "CPU timings steady on a shared machine")
@click.option("--no-sweep", is_flag=True, help="skip the Ray sweep figures (overhead, whole sweeps)")
@click.option("--projection", is_flag=True,
              help="the GPU script: attacks, peers, execution variants, the paper recipes' "
                   "training throughput and the paper-grid projection, all on --device "
                   "(about 5 minutes on one GPU; with --device cpu --quick, a tiny CPU run)")
def bench(device: str, quick: bool, out: Path | None, page: Path | None, data_dir: Path | None,
          threads: int, no_sweep: bool, projection: bool) -> None:
    """Measure mpo's speed as ratios against the physical limit and against peer libraries.

    Each figure is measured side by side in one run (interleaved repetitions; the median and
    the min..max spread are shown, with the absolute median times): 1) attack / k fwd+bwd
    passes, 2) torchattacks and foolbox / ours, 3) execution variants (channels-last,
    torch.compile, bf16) / default, 4) training step per strategy / its passes, 5) Ray sweep
    overhead and evaluation fan-out, and whole `mpo sweep` runs (the quickstart's wall time;
    busy CPU-seconds over wall x CPUs of the toy and a 2-trial MNIST sweep; not in --quick),
    6) the paper recipes' training throughput and the paper-grid projection (on a GPU, or with
    --projection), 7) what each shipped suite costs per 100 test points of a robust model, the
    previous suite's beside it (mnist-mini not in --quick), 8) how long `mpo` takes to answer
    (grids, status, refused mistakes). A figure that cannot be measured is reported as
    skipped, with the reason.
    """
    from jobs.errors import MpoError
    from jobs.io import check_writable
    from jobs.training import resolve_device
    from orchestrator.bench.run import run_bench
    from orchestrator.console import log_line, make_console

    if device == "cuda":
        resolve_device(device)  # ConfigError when this machine has no CUDA
    if out is not None:  # before measuring: a failed write at the end would lose every figure
        check_writable(out, folder=False, what="--out")
    if page is not None:
        check_writable(page, folder=False, what="--page")
    console = make_console()
    command = _command_line(click.get_current_context())
    with console.status("benchmarking") as status:
        report = run_bench(
            device=device, quick=quick, data_dir=None if data_dir is None else str(data_dir),
            command=command, sweep=not no_sweep, projection=projection, threads=threads or None,
            progress=lambda msg: (status.update(msg), log_line(console, msg)),
        )
    render(report, console)
    if out is not None:
        save_report(report, out)
        console.print(f"wrote {out}")
    if page is not None:
        from orchestrator.bench.page import write_page

        try:
            console.print(f"wrote {write_page(report, page)}")
        except OSError as err:
            fallback = Path(tempfile.mkdtemp(prefix="mpo-bench-")) / "report.json"
            save_report(report, fallback)
            raise MpoError(f"--page {page}: cannot write it ({err.strerror or err}); the report "
                           f"is saved in {fallback}") from None
