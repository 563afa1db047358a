"""Reading results files: the per-example rows, per-model accuracies, and shard metadata.

Torch-free (pandas and pyarrow only): what the evaluation wrote (``jobs.evaluation``, one
parquet file per shard with the columns of ``jobs.schema``) is read here by the orchestrator and
by ``mpo eval``'s summary.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from jobs.schema import COLUMNS, META_SHARD, check_schema_version, upgrade

#: A summary group as callers give it: {"families": [...], "affine": [...]} or a list of families.
GroupSpec = Mapping[str, list[str]] | list[str]


def read_results(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Concatenate results files into one DataFrame (schema version checked)."""
    frames = []
    for p in paths:
        table = pq.read_table(p)
        check_schema_version(table.schema.metadata, path=str(p))
        frames.append(upgrade(table).to_pandas())
    if not frames:
        return pd.DataFrame({name: [] for name in COLUMNS})
    return pd.concat(frames, ignore_index=True)


def _shard_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(META_SHARD, b"{}").decode())


def existing_content_key(path: str | os.PathLike[str]) -> str | None:
    """The content key in a results file's metadata, or None (absent or unreadable file)."""
    try:
        return _shard_meta(path).get("content_key")
    except (OSError, ValueError):
        return None


def read_cascade(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A results file's cascade record ``{"after": [...], "broken_by": {index: name}}`` with
    integer indices, or None for a shard that was not cascaded."""
    record = _shard_meta(path).get("cascade")
    if not record:
        return None
    return {"after": list(record["after"]),
            "broken_by": {int(k): v for k, v in record["broken_by"].items()}}


def _normalise_groups(groups: Mapping[str, GroupSpec] | None,
                      df: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    if groups is None:
        fams = list(dict.fromkeys(df["family"]))
        return {"all": {"families": [f for f in fams if "+" not in f],
                        "affine": [f for f in fams if "+" in f]}}
    out = {}
    for g, v in groups.items():
        if isinstance(v, Mapping):
            out[g] = {"families": list(v.get("families", [])), "affine": list(v.get("affine", []))}
        else:
            out[g] = {"families": list(v), "affine": []}
    return out


def summarize(paths_or_df: Iterable[str | os.PathLike[str]] | pd.DataFrame,
              groups: Mapping[str, GroupSpec] | None = None) -> dict[str, Any]:
    """Accuracies per model at full budget: ``{model_id: {"label", "n", "clean", "families":
    {family: acc}, "attacks": {attack: acc}, "groups": {group: {"families", "union", "average",
    "affine": {family: acc}}}}}``.

    An input is robust to a family when it is clean-correct and no attack of that family fooled
    it; union: robust to every family of the group; average: mean of the group's family
    accuracies. Only inputs evaluated by every attack of the model are counted (``n``).
    """
    df = paths_or_df if isinstance(paths_or_df, pd.DataFrame) else read_results(paths_or_df)
    df = df[df["budget"] == 1.0]
    groups_n = _normalise_groups(groups, df)
    out: dict[str, Any] = {}
    for model_id, mdf in df.groupby("model_id", sort=True):
        per_attack = mdf.pivot_table(index="index", columns="attack", values="robust", aggfunc="all")
        complete = per_attack.dropna().index
        mdf = mdf[mdf["index"].isin(complete)]
        fam = mdf.pivot_table(index="index", columns="family", values="robust", aggfunc="all")
        clean = mdf.groupby("index")["clean_correct"].all()
        order = [f for f in dict.fromkeys(mdf["family"]) if f in fam.columns]
        fam_acc = {f: float(fam[f].mean()) for f in order}
        att_acc = {a: float(s.mean()) for a, s in mdf.groupby("attack")["robust"]}
        gsum = {}
        for g, spec in groups_n.items():
            fams = [f for f in spec["families"] if f in fam.columns]
            if not fams:
                continue
            gsum[g] = {
                "families": fams,
                "union": float(fam[fams].all(axis=1).mean()),
                "average": float(sum(fam_acc[f] for f in fams) / len(fams)),
                "affine": {f: fam_acc[f] for f in spec["affine"] if f in fam_acc},
            }
        out[str(model_id)] = {
            "label": str(mdf["model_label"].iloc[0]) if len(mdf) else "",
            "n": len(complete),
            "clean": float(clean.mean()) if len(clean) else math.nan,
            "families": fam_acc,
            "attacks": att_acc,
            "groups": gsum,
        }
    return out
