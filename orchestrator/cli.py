"""The ``mpo`` command line.

Subcommands live in ``orchestrator.commands.*`` and are imported only when used, so ``mpo --help``
and ``mpo --version`` stay fast (no torch or Ray import).
"""

from __future__ import annotations

import importlib

import click

from jobs import __version__

#: command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "data": "orchestrator.commands.data:data",
    "train": "orchestrator.commands.train:train",
    "eval": "orchestrator.commands.evaluate:eval_command",
    "sweep": "orchestrator.commands.sweep:sweep",
    "grids": "orchestrator.commands.sweep:grids",
    "status": "orchestrator.commands.sweep:status",
    "report": "orchestrator.commands.report:report",
    "theory": "orchestrator.commands.theory:theory",
    "bench": "orchestrator.commands.bench:bench",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mpo")
def main() -> None:
    """mpo: adversarial training and robustness for multiple perturbations, on Ray.

    Reproduces Tramer & Boneh (NeurIPS 2019): train models against several perturbation
    types (l_inf, l_1, l_2, rotation-translation), evaluate them per example, and report
    per-type, union and average robustness.
    """


if __name__ == "__main__":  # pragma: no cover
    main()
