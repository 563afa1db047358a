"""``mpo export RUN_DIR --format csv|json``: a run's tables for other tools (no torch, no Ray).

Reads the run folder as ``mpo report`` does (``analysis.loading``) and writes, to
``RUN_DIR/export`` by default:

- ``accuracy.csv`` / ``accuracy.json``: one record per (group, model, measure), measure being
  ``clean``, each family, ``union`` and ``average``, with the accuracy (a fraction), the number
  of inputs and the Wilson 95% interval: the numbers of the report's group tables;
- with ``json``, ``model_info/<dataset>/<group>/<model_id>.json``: each model's results in the
  layout of RobustBench's ``model_info`` entries where it fits (``name``, ``dataset``,
  ``architecture``, ``eps``, ``clean_acc``, ``autoattack_acc``: percentages as strings with two
  decimals), with mpo's own numbers under ``mpo_*`` keys (union, average, per family);
- with ``--rows``, the per-input rows themselves (``rows.csv`` / ``rows.jsonl``), every column of
  ``jobs.schema.COLUMNS``.

``mpo export --schema`` prints the public description of the per-input table (``schema_markdown``,
made from ``jobs.schema.COLUMNS``), which the README carries verbatim.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from jobs.errors import MpoError

if TYPE_CHECKING:
    from analysis.loading import ModelInfo, ResultSet
    from analysis.metrics import GroupTable, TableRow

#: AutoAttack's standard ensemble, as a suite attack's description names its components.
AUTOATTACK_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")

FORMATS = ("csv", "json")
ACCURACY_FIELDS = ("group", "dataset", "model_id", "label", "strategy", "source", "measure",
                   "accuracy", "n", "ci_low", "ci_high", "complete")
#: mpo's l_p families -> RobustBench's threat model names.
THREAT_MODELS = {"linf": "Linf", "l2": "L2"}


def schema_markdown() -> str:
    """The per-input table's columns as a Markdown table (name, type, meaning), from
    ``jobs.schema.COLUMNS``, and its version."""
    from jobs.schema import COLUMNS, SCHEMA_VERSION

    lines = [f"Schema version {SCHEMA_VERSION} (`mpo.schema_version` in each file's metadata).",
             "", "| column | type | meaning |", "| --- | --- | --- |"]
    for name, (typ, meaning) in COLUMNS.items():
        cell = meaning.replace("|", "\\|")  # a pipe would end the Markdown cell
        lines.append(f"| `{name}` | {typ} | {cell} |")
    return "\n".join(lines) + "\n"


def parse_formats(text: str) -> tuple[str, ...]:
    fmts = tuple(f.strip() for f in text.split(",") if f.strip())
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise MpoError(f"--format {text!r}: allowed formats are {', '.join(FORMATS)} "
                          "(comma-separated)")
    return fmts


def model_source(model: ModelInfo) -> str:
    """Where an external model comes from (factory path, TorchScript file, zoo name); '' for a
    model mpo trained. ``ModelInfo.config`` is the results' model metadata (the record under
    ``config``) or the manifest's record itself."""
    record = model.config.get("config", model.config)
    external = record.get("external") if isinstance(record, dict) else None
    return str(external.get("source", "")) if isinstance(external, dict) else ""


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def accuracy_records(rs: ResultSet, tables: list[GroupTable]) -> list[dict[str, Any]]:
    """One record per (group, model, measure) of the report's group tables; ``complete`` is
    false for a model with expected results missing or unreadable (its worst case may then be
    optimistic: an attack that did not run on an input cannot have broken it)."""
    out = []
    incomplete = rs.incomplete_models()
    for table in tables:
        for row in table.all_rows:  # every soup, not only each family's best
            for measure in table.columns:
                est = row.cells[measure].estimate
                if est is None:
                    continue
                out.append({
                    "group": table.group, "dataset": table.dataset,
                    "model_id": row.model.model_id, "label": row.model.label,
                    "strategy": row.model.strategy, "source": model_source(row.model),
                    "measure": measure, "accuracy": _number(est.value), "n": est.n,
                    "ci_low": _number(est.low), "ci_high": _number(est.high),
                    "complete": row.model.model_id not in incomplete,
                })
    return out


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _eps_text(family: str, eps: float) -> str:
    """RobustBench writes an l_inf radius as a fraction of 255 ("8/255")."""
    scaled = eps * 255
    if family == "linf" and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{eps:g}"


def _threat_family(model: ModelInfo, families: tuple[str, ...]) -> str | None:
    """The family RobustBench's eps and autoattack_acc refer to: the zoo entry's own threat
    model, else l_inf, else l_2, when the group has it."""
    record = model.config.get("config", model.config)
    spec = ((record.get("external") or {}).get("spec") or {}) if isinstance(record, dict) else {}
    own = {v: k for k, v in THREAT_MODELS.items()}.get(str(spec.get("threat_model")))
    for family in (own, "linf", "l2"):
        if family in families:
            return family
    return None


def _autoattack_acc(rs: ResultSet, group: str, model_id: str, family: str) -> float | None:
    """Accuracy against AutoAttack's standard version of ``family`` at the full budget, when the
    group's suite ran it (RobustBench's ``autoattack_acc``)."""
    names = {a.name for suite in rs.group_suites(group) for a in suite.attacks
             if a.family == family and a.base == a.name and a.components == AUTOATTACK_STANDARD}
    rows = rs.rows[(rs.rows["model_id"] == model_id) & rs.rows["attack"].isin(names)]
    if rows.empty:
        return None
    return float(rows.groupby("index")["robust"].all().mean())


def model_info(rs: ResultSet, table: GroupTable, row: TableRow,
               epsilon: dict[str, float]) -> dict[str, Any]:
    """One model's entry in RobustBench's ``model_info`` layout, plus ``mpo_*`` keys."""
    model = row.model
    record = model.config.get("config", model.config)
    cells = {c: row.cells[c].estimate for c in table.columns}
    info: dict[str, Any] = {
        "name": model.label,
        "dataset": table.dataset,
        "architecture": str(((record or {}).get("model") or {}).get("name", "")),
        "number_forward_passes": 1,
    }
    if model.strategy != "external":
        info["additional_data"] = False  # mpo trains on the dataset's own training split
    family = _threat_family(model, table.families)
    if family is not None and family in epsilon:
        info["eps"] = _eps_text(family, epsilon[family])
    if cells["clean"] is not None:
        info["clean_acc"] = _pct(cells["clean"].value)
    aa = _autoattack_acc(rs, table.group, model.model_id, family) if family else None
    if aa is not None:
        info["autoattack_acc"] = _pct(aa)
    info.update({
        "mpo_model_id": model.model_id,
        "mpo_strategy": model.strategy,
        "mpo_source": model_source(model),
        "mpo_group": table.group,
        "mpo_threat_model": THREAT_MODELS.get(family or ""),
        "mpo_families": list(table.families),
        "mpo_epsilon": {f: epsilon[f] for f in table.families if f in epsilon},
        "mpo_n": row.n_inputs,
        "mpo_family_acc": {f: _pct(cells[f].value) for f in table.families
                           if cells.get(f) is not None},
        "mpo_union_acc": _pct(cells["union"].value) if cells.get("union") else None,
        "mpo_average_acc": _pct(cells["average"].value) if cells.get("average") else None,
        "mpo_complete": model.model_id not in rs.incomplete_models(),
    })
    return info


def damage_lines(rs: ResultSet) -> list[str]:
    """What ``mpo report`` lists as missing or skipped, one line each (the exported records of
    those models say ``complete: false``)."""
    out = [f"skipped file {f.path.relative_to(rs.run_dir)}: {f.reason}" for f in rs.skipped_files]
    out += [f"missing shard {s.model_id} {s.attack} [{s.start}, {s.stop}): {s.reason}"
            for s in rs.missing_shards]
    out += [f"missing trial {mid}: no results" for mid in rs.missing_trials]
    return out


def _csv_text(fields: tuple[str, ...], records: list[dict[str, Any]]) -> str:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


def write_export(rs: ResultSet, out: Path, formats: tuple[str, ...], *, rows: bool) -> list[Path]:
    """Write the export files; returns their paths."""
    from analysis.build import group_epsilon
    from analysis.metrics import group_table
    from jobs.io import atomic_write, write_json_atomic, write_text_atomic
    from jobs.schema import COLUMNS

    tables = [group_table(rs, g) for g in rs.groups]
    records = accuracy_records(rs, tables)
    full_rows = rs.rows[list(COLUMNS)]
    written = []
    if "csv" in formats:
        written.append(write_text_atomic(out / "accuracy.csv", _csv_text(ACCURACY_FIELDS, records)))
        if rows:
            written.append(atomic_write(out / "rows.csv",
                                        lambda tmp: full_rows.to_csv(tmp, index=False)))
    if "json" in formats:
        written.append(write_json_atomic(out / "accuracy.json", records))
        for table in tables:
            epsilon = group_epsilon(rs, table.group)
            for row in table.all_rows:
                path = out / "model_info" / table.dataset / table.group / f"{row.model.model_id}.json"
                written.append(write_json_atomic(path, model_info(rs, table, row, epsilon)))
        if rows:
            written.append(atomic_write(out / "rows.jsonl", lambda tmp: full_rows.to_json(
                tmp, orient="records", lines=True)))
    return written


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path), required=False)
@click.option("--format", "formats", default="csv,json", show_default=True,
              help="Comma-separated: csv, json.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Output folder (default RUN_DIR/export).")
@click.option("--rows", is_flag=True, help="Also write the per-input rows (rows.csv, rows.jsonl).")
@click.option("--schema", is_flag=True,
              help="Print the per-input table's columns (Markdown) instead; no RUN_DIR.")
def export(run_dir: Path | None, formats: str, out_dir: Path | None, rows: bool,
           schema: bool) -> None:
    """Write RUN_DIR's accuracy tables (and, with --rows, its per-input rows) as CSV or JSON,
    with a RobustBench-style model_info JSON per model and group."""
    from jobs.io import check_writable
    from jobs.run_folder import check_run_dir
    from orchestrator.console import make_console

    if schema:
        click.echo(schema_markdown(), nl=False)
        return
    if run_dir is None:
        raise click.UsageError("give RUN_DIR (a folder of mpo eval or mpo sweep), or --schema")
    fmts = parse_formats(formats)
    check_run_dir(run_dir)  # before the analysis imports: a mistyped folder is refused at once
    from analysis.loading import load_results

    rs = load_results(run_dir)
    out = check_writable(out_dir if out_dir is not None else run_dir / "export", folder=True,
                         what="--out")
    written = write_export(rs, out, fmts, rows=rows)
    for line in damage_lines(rs):
        click.echo(f"warning: {line}", err=True)
    console = make_console()
    console.print(f"wrote {len(written)} files to {out}")
    for path in written:
        console.print(f"  {path}", highlight=False)
