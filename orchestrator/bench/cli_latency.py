"""Group ``cli``: how long the ``mpo`` executable takes to answer, from the shell prompt to its
exit, for the commands a user types while planning (``mpo grids``, ``mpo status``) and for the
mistakes it refuses (a missing file, a bad option). Target: under 0.5 s each; torch, Ray and the
analysis stack are imported only where a command needs them.

Each command runs as its own process (``mpo`` beside this Python), repeated; the figure is the
median wall time with the min..max spread.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.bench.figures import Figure, Target, ratio_figure

TARGET = Target("<=", 0.5)
#: figure key: (title, the command's arguments; MISSING is a path that does not exist,
#: RUN an empty run folder)
COMMANDS: dict[str, tuple[str, list[str]]] = {
    "cli/grids": ("mpo grids (every shipped grid, parsed with its suites)", ["grids"]),
    "cli/status": ("mpo status RUN_DIR (a run folder with no trial yet)", ["status", "RUN"]),
    "cli/missing_config": ("mpo train MISSING.yaml (refused)", ["train", "MISSING.yaml"]),
    "cli/missing_run": ("mpo report MISSING (refused)", ["report", "MISSING"]),
    "cli/refused_option": ("mpo sweep toy --cpus-per-trial -1 (refused)",
                           ["sweep", "toy", "--cpus-per-trial", "-1"]),
    "cli/missing_data": ("mpo data check --data-dir MISSING (refused)",
                         ["data", "check", "--data-dir", "MISSING"]),
}


def mpo_command() -> list[str]:
    """The ``mpo`` executable installed beside this Python (else the module through Python)."""
    script = Path(sys.executable).with_name("mpo")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from orchestrator.cli import main; main()"]


def _run_folder(root: Path) -> Path:
    """An ``mpo eval`` folder before its first result: a manifest with no trial."""
    from jobs.run_folder import Manifest, RunFolder

    rf = RunFolder(root / "run")
    rf.path.mkdir(parents=True)
    rf.write_manifest(Manifest())
    return rf.path


def _wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def cli_figures(reps: int) -> list[Figure]:
    """One figure per command of ``COMMANDS``: its median wall time over ``reps`` runs."""
    out = []
    with tempfile.TemporaryDirectory(prefix="mpo-bench-cli-") as tmp:
        root = Path(tmp)
        names = {"MISSING": str(root / "missing"), "MISSING.yaml": str(root / "missing.yaml"),
                 "RUN": str(_run_folder(root))}
        base = mpo_command()
        for key, (title, args) in COMMANDS.items():
            argv = base + [names.get(a, a) for a in args]
            _wall(argv)  # warm the file cache: the first run after an install reads from disk
            times = [_wall(argv) for _ in range(reps)]
            out.append(ratio_figure(key, "cli", title, times, target=TARGET, unit="s",
                                    times={"mpo": times},
                                    details={"command": " ".join(["mpo", *args])}))
    return out
