"""``mpo slurm-script``: the batch script that runs a sweep on a Slurm allocation.

The script ships inside the package (``orchestrator/slurm/mpo-sweep.sbatch``) so that a
pip-installed mpo has it: it starts a Ray head on the allocation's first node and a Ray worker
on each other node (``srun``), runs ``mpo sweep ... --address HEAD`` on the head, and stops Ray
when the sweep ends. This command only writes it out; the user edits its ``#SBATCH`` lines and
submits it with ``sbatch``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import click

from jobs.errors import MpoError

SCRIPT_NAME = "mpo-sweep.sbatch"


class ScriptExistsError(MpoError, FileExistsError):
    """``--out FILE`` names a file that exists (and no ``--force``)."""


def script_text() -> str:
    """The shipped batch script, as text."""
    return files("orchestrator").joinpath("slurm", SCRIPT_NAME).read_text(encoding="utf-8")


def write_script(out: Path, *, force: bool = False) -> Path:
    """Write the batch script to ``out``, executable; refuse to overwrite without ``force``."""
    if out.exists() and not force:
        raise ScriptExistsError(f"--out {out}: the file exists; pass --force to overwrite it")
    if out.parent and not out.parent.is_dir():
        raise ScriptExistsError(f"--out {out}: no such folder {out.parent}")
    out.write_text(script_text(), encoding="utf-8")
    mode = out.stat().st_mode
    out.chmod(mode | (mode & 0o444) >> 2)  # executable by whoever may read it
    return out


@click.command("slurm-script")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the script to this file (made executable) instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
def slurm_script(out: Path | None, force: bool) -> None:
    """Print the Slurm batch script that runs a sweep on an allocation (Ray head on the first
    node, workers on the others, `mpo sweep` on the head; the run folder on shared storage).

    Edit its #SBATCH lines (nodes, CPUs, GPUs, time), activate mpo's environment, then e.g.
    `MPO_STORAGE=/shared/mpo-runs sbatch sweep.sbatch toy --name toy-1`; resume with
    `sbatch sweep.sbatch --resume /shared/mpo-runs/toy-1`.
    """
    if out is None:
        click.echo(script_text(), nl=False)
        return
    path = write_script(out, force=force)
    click.echo(f"wrote {path}; edit its #SBATCH lines, then: "
               f"sbatch {path} GRID [mpo sweep options]", err=True)
