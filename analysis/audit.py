"""The strength audit, read: where AutoAttack's standard version (as shipped) disagrees with the
suite, per model, family and budget point (the files ``jobs.audit`` writes under ``audit/``).

For each audited (model, family, budget), over the sampled inputs the suite evaluated:

- ``missed``: inputs AutoAttack broke that the suite called robust (the suite is weaker than
  AutoAttack there: its robust accuracy is too high by at least missed / n);
- ``upper``: a one-sided 95% Clopper-Pearson upper bound on the rate of such inputs in the test
  set the sample was drawn from (0 missed of 100 still allows up to 3.0%);
- ``extra``: inputs the suite broke that AutoAttack called robust (the suite's other attacks).

A suite is flagged weaker than AutoAttack where ``missed`` > 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.stats import beta

from jobs.run_folder import AUDIT_DIR

#: one-sided confidence of the upper bound
CONFIDENCE = 0.95


def clopper_pearson_upper(k: int, n: int, *, confidence: float = CONFIDENCE) -> float:
    """One-sided upper confidence bound of a proportion k / n (1 when k == n; nan when n == 0)."""
    if n == 0:
        return math.nan
    if k >= n:
        return 1.0
    return float(beta.ppf(confidence, k + 1, n - k))


def load_audit(run_dir: Path, warnings: list[str]) -> pd.DataFrame | None:
    """Every audit row of the run (None without an ``audit`` folder); an unreadable file is
    left out with a warning."""
    folder = Path(run_dir) / AUDIT_DIR
    files = sorted(folder.glob("*/*.parquet")) if folder.is_dir() else []
    frames = []
    for path in files:
        try:
            frames.append(pq.read_table(path).to_pandas())
        except (OSError, pa.ArrowException) as err:
            warnings.append(f"audit file {path.relative_to(run_dir)} unreadable ({err}); left out")
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True)


def audit_request(run_dir: Path) -> dict[str, object]:
    """The request the run's audit files record (the first file's), or {}."""
    for path in sorted((Path(run_dir) / AUDIT_DIR).glob("*/*.parquet")):
        try:
            meta = pq.read_schema(path).metadata or {}
            return dict(json.loads(meta.get(b"mpo.audit", b"{}").decode()).get("request") or {})
        except (OSError, ValueError, pa.ArrowException):
            continue
    return {}


@dataclass(frozen=True)
class AuditSummary:
    """One audited (model, family, budget point)."""

    model_id: str
    label: str
    family: str
    budget: float
    epsilon: float
    #: sampled inputs the suite evaluated (those the comparison counts)
    n: int
    suite_robust: int
    aa_robust: int
    missed: int
    extra: int

    @property
    def upper(self) -> float:
        return clopper_pearson_upper(self.missed, self.n)

    @property
    def weaker(self) -> bool:
        return self.missed > 0


def audit_summaries(rows: pd.DataFrame | None) -> list[AuditSummary]:
    """Per model, family and budget point, in the order of the rows."""
    if rows is None or rows.empty:
        return []
    out = []
    keys = ["model_id", "family", "budget"]
    for (mid, family, budget), g in rows.groupby(keys, sort=False):
        g = g[g["suite_evaluated"]]
        suite, aa = g["suite_robust"].astype(bool), g["aa_robust"].astype(bool)
        out.append(AuditSummary(
            model_id=str(mid), label=str(g["model_label"].iloc[0]) if len(g) else "",
            family=str(family), budget=float(budget),
            epsilon=float(g["epsilon"].iloc[0]) if len(g) else math.nan, n=len(g),
            suite_robust=int(suite.sum()), aa_robust=int(aa.sum()),
            missed=int((suite & ~aa).sum()), extra=int((~suite & aa).sum())))
    return out


def audit_totals(summaries: list[AuditSummary]) -> dict[str, int]:
    """Over every audited point: inputs compared, inputs AutoAttack broke that the suite called
    robust, points where that happened."""
    return {"points": len(summaries), "inputs": sum(s.n for s in summaries),
            "missed": sum(s.missed for s in summaries),
            "weaker_points": sum(1 for s in summaries if s.weaker)}
