"""``mpo grids`` and ``mpo grids show NAME``: the shipped grids, and one grid file printed."""

from __future__ import annotations

import click


@click.group(invoke_without_command=True)
@click.pass_context
def grids(ctx: click.Context) -> None:
    """List the shipped grids with their trial counts (`mpo grids show NAME` prints one)."""
    if ctx.invoked_subcommand is not None:
        return
    from orchestrator.console import Col, make_console, print_table
    from orchestrator.grid import GridError, builtin_grid_names, builtin_grid_path
    from orchestrator.plan import load_plan

    cols = [Col("name"), Col("trials", "num"), Col("groups", "text"), Col("shards", "num"),
            Col("description", "text")]
    rows = []
    for name in builtin_grid_names():
        try:
            plan, _, _ = load_plan(builtin_grid_path(name))
        except GridError as err:
            rows.append([name, "-", "-", "-", f"[red]invalid: {err}[/]"])
            continue
        rows.append([name, str(len(plan.trials)), ", ".join(plan.groups), str(len(plan.shards)),
                     plan.grid.description])
    print_table(make_console(), cols, rows, title="shipped grids (mpo sweep NAME)")


@grids.command("show")
@click.argument("name")
def grids_show(name: str) -> None:
    """Print a grid file (a shipped grid's name, or a path)."""
    from orchestrator.grid import load_grid_text

    _grid, text, path = load_grid_text(name)
    click.echo(f"# {path}")
    click.echo(text.rstrip())
