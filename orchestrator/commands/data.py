"""``mpo data check`` and ``mpo data fetch``."""

from __future__ import annotations

import click

DATA_DIR_OPTION = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    envvar="MPO_DATA_DIR",
    show_envvar=True,
    help="Data root (torchvision layout). Default: $MPO_DATA_DIR, else ~/.cache/mpo/data.",
)


@click.group()
def data() -> None:
    """Check or download datasets (MNIST, CIFAR10; `toy` is generated)."""


@data.command("check")
@DATA_DIR_OPTION
@click.argument("names", nargs=-1)
def check(data_dir: str | None, names: tuple[str, ...]) -> None:
    """Which datasets are present under the data root, their sizes and checksums.

    Exit status 1 when the data root does not exist, a dataset's files are corrupt, or a dataset
    named on the command line is missing."""
    from jobs.datasets import check_name, resolve_data_dir
    from jobs.errors import MpoError

    for name in names:
        check_name(name)
    root = resolve_data_dir(data_dir)
    if not root.is_dir():  # before torchvision's import: a mistyped root is refused at once
        raise MpoError(f"data root {root} does not exist; point --data-dir (or MPO_DATA_DIR) at "
                       "the folder that holds MNIST/ and cifar-10-batches-py/, or download with "
                       "`mpo data fetch mnist cifar10`")
    from rich.table import Table

    from jobs.data import DATASETS, check_dataset
    from orchestrator.console import make_console
    console = make_console()
    table = Table(title=f"datasets under {root}")
    for col in ("dataset", "present", "train", "test", "checksums"):
        table.add_column(col, overflow="fold")
    problems: list[str] = []
    failures: list[str] = []
    for name in names or tuple(DATASETS):
        res = check_dataset(name, data_dir)
        cells = []
        for split in ("train", "test"):
            s = res["splits"].get(split, {})
            if "size" in s:
                cells.append(f"{s['size']:,}")
                continue
            err = s.get("error", "missing")
            missing = "not found" in err
            cells.append("[red]missing[/red]" if missing else "[red]corrupt[/red]")
            problems.append(err)
            if not missing or name in names:  # corrupt, or asked for and missing
                failures.append(f"{name} {split}")
        table.add_row(name, "yes" if res["present"] else "[red]no[/red]", *cells, res["checksums"])
    console.print(table)
    for problem in problems:
        console.print(f"[red]-[/red] {problem}", soft_wrap=True)
    if failures:
        raise MpoError(f"data check failed: {', '.join(failures)} (see above)")


@data.command("fetch")
@DATA_DIR_OPTION
@click.argument("names", nargs=-1, required=True)
def fetch(data_dir: str | None, names: tuple[str, ...]) -> None:
    """Download datasets (needs internet), e.g. `mpo data fetch mnist cifar10`."""
    from jobs.data import fetch as fetch_dataset
    from orchestrator.console import make_console

    console = make_console()
    for name in names:
        with console.status(f"downloading {name} ..."):
            root = fetch_dataset(name, data_dir)
        console.print(f"[green]{name}[/green] ready under {root}")
