"""``mpo soup CHECKPOINT CHECKPOINT ... --weights W,W,... --out FILE``: a model soup outside a
sweep (``jobs.soup``): the weighted average of mpo checkpoints of one architecture, written as an
mpo checkpoint that ``mpo eval`` evaluates under the soup's own model id."""

from __future__ import annotations

import click


def _weights(ctx: click.Context, param: click.Parameter, value: str) -> list[float]:
    try:
        return [float(w) for w in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: comma-separated numbers, one per checkpoint, "
                                 "summing to 1 (e.g. 0.5,0.5)") from None


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--weights", required=True, callback=_weights,
              help="One weight per checkpoint, comma-separated, summing to 1 (e.g. 0.7,0.3).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="The soup's checkpoint file.")
@click.option("--name", default="Soup", show_default=True, help="The soup family's name.")
def soup(checkpoints: tuple[str, ...], weights: list[float], out: str, name: str) -> None:
    """Average CHECKPOINTS (mpo checkpoint files or training folders, one architecture) with
    --weights into --out; BatchNorm statistics are averaged too (jobs/soup.py says why)."""
    from pathlib import Path

    from jobs.io import check_writable
    from jobs.soup import make_soup
    from jobs.training import CHECKPOINT_FILE
    from orchestrator.console import make_console

    files = [Path(c) / CHECKPOINT_FILE if Path(c).is_dir() else Path(c) for c in checkpoints]
    target = check_writable(Path(out), folder=False, what="--out")
    path, record = make_soup(files, weights, target, family=name)
    console = make_console()
    console.print(f"soup {record['label']}: model id [cyan]{record['soup']['model_id']}[/] of "
                  f"{', '.join(record['soup']['labels'])} -> {path}", soft_wrap=True)
    console.print(f"evaluate it: mpo eval {path} --suite SUITE --out DIR", soft_wrap=True)
