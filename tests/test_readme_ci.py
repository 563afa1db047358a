"""The README's two command lines and ``.ci/run`` are the same strings, so neither can drift."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_lines() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quickstart"):text.index("## Command line")]
    blocks = re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)
    assert len(blocks) == 2, blocks
    lines = [b.strip() for b in blocks]
    assert all("\n" not in line for line in lines), "each README command is one line"
    return lines[0], lines[1]


def _ci_strings() -> dict[str, str]:
    """The QUICKSTART= and TESTS= assignments of .ci/run, as bash would expand them."""
    out = {}
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        m = re.match(r"^(QUICKSTART|TESTS)=(.*)$", line)
        if m:
            (value,) = shlex.split(m.group(2))
            out[m.group(1)] = value
    return out


def test_readme_lines_are_what_ci_runs():
    quickstart, tests = _readme_lines()
    ci = _ci_strings()
    assert ci["QUICKSTART"] == quickstart
    assert ci["TESTS"] == tests


def test_quickstart_is_the_plain_install_and_the_report():
    quickstart, tests = _readme_lines()
    assert "pip install -e . &&" in quickstart and "[" not in quickstart  # no extras
    assert quickstart.endswith("mpo sweep toy --name toy && mpo report mpo-runs/toy")
    assert '".[dev]"' in tests and tests.endswith("python -m pytest -q")


def test_ci_runs_both_strings_and_checks_the_report():
    script = (ROOT / ".ci" / "run").read_text()
    assert 'bash -c "set -e; $QUICKSTART"' in script
    assert 'bash -c "set -e; $TESTS"' in script
    assert "mpo-runs/toy/report/$f" in script and "report.md" in script
    assert "pip check" in script and "ruff check ." in script
    res = subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
