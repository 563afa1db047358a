"""``mpo theory``: the paper's Section 2 results, computed (numbers, a plot, JSON and CSV)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

#: where ``mpo theory`` writes by default: under the run folders (ignored by git in a clone)
DEFAULT_OUT = "mpo-runs/theory"


def _fmt(x: float, se: float | None = None) -> str:
    return f"{x:.3f}" if se is None else f"{x:.3f} ± {se:.3f}"


def _csv_text(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _theorem1(report: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    t1 = report["theorem1"]
    table = Table(
        title="Theorem 1: risks of linear classifiers (exact); R_avg = (R_inf + R_1) / 2 >= 1/2"
    )
    for col in ("classifier", "natural", "l_inf", "l_1", "l_2", "union", "average"):
        table.add_column(col, justify="left" if col == "classifier" else "right")
    rows = t1["rows"]
    shown = [rows[0]] + [
        r for r in rows[1:]
        if round(r["theta_deg"]) % 15 == 0 and abs(r["theta_deg"] - round(r["theta_deg"])) < 1e-6
    ]
    for r in shown:
        table.add_row(r["classifier"],
                      *(_fmt(r[k]) for k in ("nat", "linf", "l1", "l2", "union", "avg")))
    console.print(table)
    verdict = "holds" if t1["holds"] else "FAILS"
    console.print(
        f"min R_avg over {len(rows)} classifiers = {t1['min_avg']:.4f} ({t1['min_avg_classifier']}): "
        f"bound R_avg >= 1/2 {verdict}; the constant classifier attains it"
    )
    gap = max(abs(r["gap"]) for r in report["claim3"])
    console.print(f"Claim 3: max |affine(l_inf+l_1) - union| over {len(report['claim3'])} linear "
                  f"classifiers = {gap:.2e}")


def _theorem2(report: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    t2 = Table(
        title="Theorem 2: best linear classifier vs l_inf (2 eta) and RT (x0 moved to 1 of N positions)"
    )
    for col in ("N", "R_inf", "R_RT", "R_avg", "1/2 - R_avg", "sqrt(N) (1/2 - R_avg)"):
        t2.add_column(col, justify="right")
    for r in report["theorem2"]:
        t2.add_row(str(r["n_positions"]), _fmt(r["linf"]), _fmt(r["rt"], r["rt_stderr"]),
                   _fmt(r["avg"], r["avg_stderr"]), _fmt(r["gap"]), _fmt(r["gap_sqrt_n"]))
    console.print(t2)


def _theorem4(report: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    t4 = report["theorem4"]
    table = Table(
        title=f"Theorem 4: affine l_inf+RT vs union (N={t4['n_positions']}, linear f with w0 > w_i > 0)"
    )
    for col in ("classifier", "R_inf", "R_RT", "union", "affine", "affine - union"):
        table.add_column(col, justify="right")
    table.add_row(
        f"theta={t4['theta_deg']:.0f}deg", _fmt(t4["linf"]["risk"]), _fmt(t4["rt"]["risk"]),
        _fmt(t4["union"]["risk"], t4["union"]["stderr"]),
        _fmt(t4["affine"]["risk"], t4["affine"]["stderr"]),
        _fmt(t4["affine_minus_union"]["risk"], t4["affine_minus_union"]["stderr"]),
    )
    console.print(table)


def _monte_carlo(report: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    mc = Table(
        title="Check: closed forms vs Monte Carlo (optimal perturbations; the proofs' perturbations)"
    )
    for col in ("classifier", "risk", "exact", "MC optimal", "MC proof"):
        mc.add_column(col, justify="right")
    for r in report["mc_check"]:
        mc.add_row(r["classifier"], r["risk"], _fmt(r["exact"]),
                   _fmt(r["mc_optimal"], r["mc_optimal_stderr"]),
                   _fmt(r["mc_proof"], r["mc_proof_stderr"]))
    console.print(mc)


def _print_report(report: dict[str, Any], console: Console) -> None:
    p = report["params"]
    console.print(
        f"[bold]Section 2 distribution[/]: d={p['d']}, alpha={p['alpha']:g}, p0={p['p0']:g}, "
        f"eta={p['eta']:.4f}; eps_inf = 2 eta = {p['eps_linf']:.4f}, eps_1 = 2, eps_2 = 2"
    )
    for step in (_theorem1, _theorem2, _theorem4, _monte_carlo):
        step(report, console)


def _command_line(ctx: click.Context) -> str:
    """The command as typed, from click's parsed parameters (defaults left out)."""
    import shlex

    parts = ["mpo", "theory"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.opts and value is not None and value != param.default:
            parts += [param.opts[0], str(value)]
    return shlex.join(parts)


#: What each table of the page shows (the page's text before the tables)
PAGE_INTRO = """What it shows:

- **Theorem 1 (l_inf against l_1).** Exact risks of linear classifiers, from sign(x0) to sign(sum x_i),
  at eps_inf = 2·eta and eps_1 = 2. (The optimal perturbation lowers the margin by eps·||w||_dual.)
  Every classifier in the sweep has R_avg >= 1/2, and the constant classifier meets the bound exactly.
- **Claim 3.** For linear classifiers the affine l_inf+l_1 adversary is exactly as strong as the union.
- **Theorem 2 (l_inf against RT).** x0 ~ N(y, alpha^-2), and RT moves x0 to one of N positions by
  swapping it with the feature already there. For each N the table gives the lowest R_avg over a grid of
  linear classifiers. The gap to 1/2 narrows as N grows. RT risks are Monte Carlo on the margins (± is
  one standard error); there is no closed form for the minimum of N correlated Gaussian margins.
- **Theorem 4.** The affine l_inf+RT adversary (RT range scaled by beta, l_inf radius by 1-beta) against
  the most union-robust linear classifier with w0 > w_i > 0. It is strictly stronger than the union.
- **Check.** Closed forms against Monte Carlo, under each classifier's optimal perturbations (these
  must agree) and under the proofs' classifier-free perturbations (a lower bound for any classifier)."""


def write_page(report: dict[str, Any], out: Path, command: str) -> Path:
    """``theory.md``: the tables as the console shows them (110 columns), the figure and the
    command that wrote them: the page the README links (``analysis/results/theory``)."""
    import io

    from rich.console import Console

    from jobs.io import write_text_atomic

    record = Console(file=io.StringIO(), width=110, record=True, color_system=None)
    _print_report(report, record)
    text = "\n".join(line.rstrip() for line in record.export_text().splitlines())
    page = out / "theory.md"
    write_text_atomic(page, (
        "# The paper's Section 2, computed\n\n"
        f"Written by `{command}` (exact risks; the RT and affine risks by Monte Carlo, ± one "
        f"standard error).\n\n{PAGE_INTRO}\n\n"
        f"```text\n{text}\n```\n\n![Section 2: risks of linear classifiers](theory.png)\n"))
    return page


def write_outputs(report: dict[str, Any], out: Path) -> list[Path]:
    """theory.json, theorem1.csv, theorem2.csv and the figure (PNG, SVG) in ``out``."""
    from analysis.theory_plot import theory_figure
    from jobs.io import write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "theory.json", report)
    for name, table_rows in (("theorem1.csv", report["theorem1"]["rows"]),
                             ("theorem2.csv", report["theorem2"])):
        write_text_atomic(out / name, _csv_text(table_rows))
    figs = theory_figure(report, out / "theory")
    return [*figs, out / "theory.json", out / "theorem1.csv", out / "theorem2.csv"]


@click.command()
# d, alpha, p0 and N are checked by the distribution itself (analysis.theory), which names them
@click.option("--d", "d", type=int, default=99, show_default=True,
              help="number of weak features x1..xd (>= 1)")
@click.option("--alpha", type=float, default=2.0, show_default=True,
              help="signal strength, eta = alpha / sqrt(d) (> 0)")
@click.option("--p0", type=float, default=0.9, show_default=True,
              help="P(x0 = y) for the sign feature, in [0.5, 1]")
@click.option("--n-positions", type=int, default=16, show_default=True,
              help="N: positions RT can move x0 to (2 .. d+1); Theorem 2 sweeps powers of two up to N")
@click.option("--n-samples", type=click.IntRange(min=100), default=40_000, show_default=True,
              help="Monte-Carlo sample size")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=DEFAULT_OUT,
              show_default=True,
              help="folder for theory.png/.svg, theory.json, theorem1.csv, theorem2.csv")
def theory(d: int, alpha: float, p0: float, n_positions: int, n_samples: int, seed: int,
           out_dir: str) -> None:
    """Tramer & Boneh Section 2: Theorem 1 (l_inf vs l_1), Theorem 2 (l_inf vs RT), Claim 3 and
    Theorem 4 (affine adversaries), on y ~ {-1,+1}, x0 = y w.p. p0, x_i ~ N(y eta, 1)."""
    from analysis.theory import Section2
    from analysis.theory_report import theory_report
    from jobs.io import check_writable
    from orchestrator.console import make_console

    check_writable(Path(out_dir), folder=True, what="--out")
    console = make_console()
    report = theory_report(Section2(d=d, alpha=alpha, p0=p0), n_positions=n_positions,
                           n=n_samples, seed=seed)
    _print_report(report, console)
    files = write_outputs(report, Path(out_dir))
    files.append(write_page(report, Path(out_dir), _command_line(click.get_current_context())))
    console.print(f"wrote {', '.join(str(f) for f in files)}", soft_wrap=True)
