"""The ``mpo`` command line.

Subcommands live in ``orchestrator.commands.*`` and are imported only when used, so ``mpo --help``
and ``mpo --version`` stay fast (no torch or Ray import).

The error boundary is here, and only here: every ``jobs.errors.MpoError`` (an error the user's
input caused: a grid, config, suite, spec, checkpoint, data root or run folder that is not
right, a missing optional package, a resource request the cluster cannot meet, a changed grid on
resume) becomes a short message on stderr and exit status 1, never a traceback. ``--debug`` (or
``MPO_DEBUG=1``) lets the exception through, traceback and all. Anything else is a bug in mpo
and keeps its traceback.
"""

from __future__ import annotations

import errno
import importlib
import os

import click

from jobs import __version__
from jobs.errors import MpoError

#: command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "data": "orchestrator.commands.data:data",
    "train": "orchestrator.commands.train:train",
    "eval": "orchestrator.commands.evaluate:eval_command",
    "audit": "orchestrator.commands.audit:audit",
    "soup": "orchestrator.commands.soup:soup",
    "sweep": "orchestrator.commands.sweep:sweep",
    "grids": "orchestrator.commands.grids:grids",
    "status": "orchestrator.commands.status:status",
    "report": "orchestrator.commands.report:report",
    "export": "orchestrator.commands.export:export",
    "theory": "orchestrator.commands.theory:theory",
    "bench": "orchestrator.commands.bench:bench",
    "slurm-script": "orchestrator.commands.slurm:slurm_script",
}

DEBUG_ENV = "MPO_DEBUG"
#: the errors of a file system that the user's environment causes (caught at the boundary)
USER_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                         errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG,
                         errno.EFBIG})


def debug_enabled(ctx: click.Context | None = None) -> bool:
    """``--debug`` on the command line, or ``MPO_DEBUG`` set to anything but 0/false/empty."""
    root = ctx.find_root() if ctx is not None else None
    if root is not None and (root.params or {}).get("debug"):
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


class UserError(click.ClickException):
    """How an ``MpoError`` leaves the CLI: ``Error: <message>`` on stderr, exit status 1."""


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use, and the error boundary."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MpoError as err:
            if debug_enabled(ctx):
                raise
            raise UserError(str(err)) from None
        except OSError as err:
            # a full or read-only disk, a folder without permission: the user's environment,
            # not a bug; one line naming the file (nothing already written is removed)
            if debug_enabled(ctx) or err.errno not in USER_ERRNOS:
                raise
            where = f" {err.filename}" if err.filename else ""
            raise UserError(f"cannot write{where}: {err.strerror or err}"
                            + ("; free some disk space and run it again (what is done is kept)"
                               if err.errno in (errno.ENOSPC, errno.EDQUOT) else "")) from None
        except KeyboardInterrupt:
            # Ctrl+C: one line that says what is kept and how to go on, and 130 (128 + SIGINT),
            # as `mpo sweep` does, instead of click's "Aborted!" and status 1
            if debug_enabled(ctx):
                raise
            from orchestrator.commands import resume_hint

            hint = resume_hint(ctx)
            click.echo(f"interrupted (SIGINT){'; ' + hint if hint else ''}", err=True)
            ctx.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mpo")
@click.option("--debug", is_flag=True, help=f"Show the full traceback of an error (or set {DEBUG_ENV}=1).")
def main(debug: bool) -> None:
    """mpo: adversarial training and robustness for multiple perturbations, on Ray.

    Reproduces Tramer & Boneh (NeurIPS 2019): train models against several perturbation
    types (l_inf, l_1, l_2, rotation-translation), evaluate them per example, and report
    per-type, union and average robustness.
    """


if __name__ == "__main__":  # pragma: no cover
    main()
