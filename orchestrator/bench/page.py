"""The benchmark page (``mpo bench --page FILE.md``): one run's figures as a Markdown table, each
with the value the page held before (so a page shows the previous run beside the new one), the
target and status, the spread over the repetitions, and the run's command, machine and load.

Only the part between the page's marker comments (``BEGIN`` and ``END``) is rewritten, so the
prose around it stays; a page without them is written whole. The "before" column is read back
from the table it replaces (the ``key`` column ties a row to its figure), so it always holds the
previous run's value.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

BEGIN = "<!-- begin mpo bench (written by mpo bench --page) -->"
END = "<!-- end mpo bench -->"
#: a row of the page's table: | title | `key` | before | value (spread) | ...
_ROW = re.compile(r"^\| (?P<title>[^|]*) \| `(?P<key>[^`]+)` \| (?P<before>[^|]*) \| (?P<value>[^|(]*)")


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    digits = 3 if abs(value) < 10 else 1
    return f"{value:.{digits}f}{' s' if unit == 's' else ''}"


def previous_values(page: Path) -> dict[str, str]:
    """{figure key: its value} of the page's table, between its markers where it has them
    (empty without a page)."""
    if not page.exists():
        return {}
    text = page.read_text(encoding="utf-8")
    if BEGIN in text and END in text:  # the table mpo bench wrote, not the notes' own tables
        text = text.split(BEGIN, 1)[1].split(END, 1)[0]
    out = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m and m["value"].strip():
            out[m["key"]] = m["value"].strip()
    return out


def _note(f: dict[str, Any]) -> str:
    if f.get("reason"):
        return str(f["reason"])
    parts = [f"{k} {v:.3g} s" for k, v in (f.get("times_s") or {}).items()]
    d = f.get("details") or {}
    if "success_ours" in d:
        parts.append(f"success ours {d['success_ours']:.2f} / peer {d['success_peer']:.2f}")
    if "before_is" in d:  # a suite's cost: the previous suite's, per 100 points
        parts.append(f"before {d['before']:.3g} s per 100 points: {d['before_is']}")
    return "; ".join(parts)


def _shown_command(command: str) -> str:
    """The command as typed, without ``--out FILE`` (where the JSON went is no figure's
    business, and often a machine's own path)."""
    words = shlex.split(command)
    kept = [w for i, w in enumerate(words)
            if w != "--out" and not (i and words[i - 1] == "--out") and not w.startswith("--out=")]
    return shlex.join(kept)


def render_page(report: dict[str, Any], before: dict[str, str]) -> str:
    """The page's Markdown for ``report`` (``orchestrator.bench.run.run_bench``'s)."""
    m = report["machine"]
    load = m.get("load_average_start")
    lines = [
        f"Written by `{_shown_command(report['command'])}` on {report['created']}: "
        f"{m['cpu']}, {m['cores']} cores" + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + f", device {report['device']}, torch {report['versions']['torch']}, "
        f"ray {report['versions']['ray']}; {report['seconds']:.0f} s"
        + (f"; 1-minute load {load[0]:.1f} at the start" if load else "") + ".",
        "",
        "Each figure is a ratio of two things timed alternately in one run (or a time, in "
        "seconds): the median over the repetitions, with their min-max spread. \"before\" is "
        "the value this page held before this run (empty for a new figure), measured on the "
        "machine its own header names. What each group measures: `mpo bench --help` and the "
        "top of this page.",
        "",
        "| figure | key | before | value (spread) | target | status | notes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in report["figures"]:
        unit = f.get("unit", "x")
        value = _fmt(f.get("value"), unit)
        if f.get("spread") and value:
            value += f" ({_fmt(f['spread'][0], unit)}-{_fmt(f['spread'][1], unit)})"
        title = str(f["title"]).replace("|", "/")
        lines.append(f"| {title} | `{f['key']}` | {before.get(f['key'], '')} | {value} | "
                     f"{f.get('target') or ''} | {f['status']} | {_note(f).replace('|', '/')} |")
    s = report["summary"]
    lines += ["", "Summary: " + ", ".join(f"{v} {k}" for k, v in s.items() if v) + "."]
    return "\n".join(lines)


def write_page(report: dict[str, Any], page: Path) -> Path:
    """Rewrite ``page`` for ``report``, its previous values in the "before" column."""
    from jobs.io import atomic_write

    block = f"{BEGIN}\n{render_page(report, previous_values(page))}\n{END}"
    old = page.read_text(encoding="utf-8") if page.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = f"# mpo bench: the benchmark page\n\n{block}\n"
    atomic_write(page, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return page
