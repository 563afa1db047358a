"""The strength audit: AutoAttack's standard version, as shipped, beside a suite's verdicts.

A robust-accuracy number is an upper bound, only as good as the attacks behind it. The audit
checks a run's suite against the field's standard, per input: on a sample of each model's test
points it runs pyautoattack's own ``AutoAttack(version="standard").run_standard_evaluation``
(APGD-CE, APGD-T, FAB-T, Square with the standard settings and its own seeding) for each l_p
family at the asked budget points, and records, per input, whether AutoAttack broke it (a
misclassified input inside the family's ball: the evaluation's in-ball rule) beside whether the
suite found the input robust (robust to every attack of the family at that budget, from the run's
results). An input AutoAttack broke that the suite called robust means the suite is weaker than
AutoAttack there; ``analysis.audit`` counts them with an upper confidence bound.

Files: ``RUN_DIR/audit/<model_id>/<family>@<budget>.parquet``, one row per sampled input
(``AUDIT_COLUMNS``), written atomically; the metadata (``mpo.audit``) holds what was asked (seed,
sample, radius, pyautoattack's version) and a content key, so an audit already on disk is not
run again. The sample is the same for every model and family of a run (a seeded draw from the
first ``n_test`` points), so the audits can be compared across models.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.attacks.balls import LP_FAMILIES
from jobs.errors import ConfigError
from jobs.io import atomic_write
from jobs.run_folder import AUDIT_DIR, RunFolder, RunFolderError, TrialEntry

if TYPE_CHECKING:
    import torch

    from jobs.evaluation import LoadedModel
    from jobs.external import ExternalModel
    from jobs.suite import EvalSuite

#: ``mpo.audit`` metadata version (and of the columns below)
AUDIT_VERSION = 1
META_AUDIT = b"mpo.audit"
#: One row per sampled input.
AUDIT_COLUMNS: dict[str, pa.DataType] = {
    "model_id": pa.string(), "model_label": pa.string(), "family": pa.string(),
    "budget": pa.float64(), "epsilon": pa.float64(), "index": pa.int64(), "label": pa.int64(),
    "clean_correct": pa.bool_(), "aa_robust": pa.bool_(), "aa_perturbation": pa.float64(),
    "suite_robust": pa.bool_(), "suite_evaluated": pa.bool_(),
}
#: The budget points an audit can ask for: the full budget, or every point of the suite.
BUDGET_CHOICES = ("full", "all")


@dataclass(frozen=True)
class AuditRequest:
    """What to audit: ``n`` test points (a seeded sample of the first ``n_test``), the budget
    points (``full`` or ``all`` of the suite's), and the seed of the sample and of AutoAttack."""

    n: int = 100
    budgets: str = "full"
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and self.n >= 1):
            raise ConfigError(f"audit n = {self.n!r}: must be an integer >= 1")
        if self.budgets not in BUDGET_CHOICES:
            raise ConfigError(f"audit budgets = {self.budgets!r}: must be one of "
                              f"{', '.join(BUDGET_CHOICES)}")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ConfigError(f"audit seed = {self.seed!r}: must be an integer >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "budgets": self.budgets, "seed": self.seed}


def sample_indices(n_test: int, n: int, seed: int) -> list[int]:
    """A seeded sample of ``n`` of the first ``n_test`` test points, ascending (all of them when
    ``n >= n_test``)."""
    if n >= n_test:
        return list(range(n_test))
    return sorted(random.Random(seed).sample(range(n_test), n))


@dataclass(frozen=True)
class AuditPoint:
    """One AutoAttack run: a family at a budget point, and its radius."""

    family: str
    budget: float
    epsilon: float

    @property
    def filename(self) -> str:
        return f"{self.family}@{self.budget:g}.parquet"


def audit_points(suite_radius: dict[str, float], budgets: dict[str, list[float]],
                 families: Sequence[str], request: AuditRequest) -> list[AuditPoint]:
    """The (family, budget) points to audit: the l_p ``families`` (of the model's groups) with a
    radius in the suite, at the full budget or at each of the suite's points."""
    out = []
    for family in families:
        if family not in LP_FAMILIES or family not in suite_radius:
            continue
        points = [1.0] if request.budgets == "full" else sorted(set(budgets.get(family, [])) | {1.0})
        out += [AuditPoint(family, b, suite_radius[family] * b) for b in points]
    return out


def audit_path(run_dir: str | Path, model_id: str, point: AuditPoint) -> Path:
    return Path(run_dir) / AUDIT_DIR / model_id / point.filename


def _key(loaded: LoadedModel, point: AuditPoint, indices: list[int], request: AuditRequest) -> str:
    body = {"version": AUDIT_VERSION, "model": loaded.identity, "family": point.family,
            "epsilon": round(point.epsilon, 12), "indices": indices, "seed": request.seed}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _existing_key(path: Path) -> str | None:
    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta.get(META_AUDIT, b"{}").decode()).get("key")
    except (OSError, ValueError, pa.ArrowException):
        return None


def autoattack_standard(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, family: str,
                        epsilon: float, seed: int, bounds: tuple[float, float] | None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """pyautoattack's standard version as shipped on x [n, ...], y [n]: (robust [n] bool, the
    size [n] of each adversarial perturbation in the family's norm). A perturbation outside the
    ball (or an input outside the box) does not count, as everywhere in mpo."""
    import torch

    from jobs.attacks.autoattack.attack import AUTOATTACK_NORMS
    from jobs.attacks.library.attack import UnitScaled, require
    from jobs.attacks.norms import perturbation_norm
    from jobs.attacks.specbase import BUDGET_RTOL

    require("pyautoattack", attack="autoattack version 'standard' (mpo audit)")
    from pyautoattack import AutoAttack

    lo, hi = bounds if bounds is not None else (float(x.min()) - 1.0, float(x.max()) + 1.0)
    scaled = UnitScaled(model, lo, hi).eval()
    u = (x - lo) / (hi - lo)
    aa = AutoAttack(scaled, norm=AUTOATTACK_NORMS[family], eps=epsilon / (hi - lo),
                    version="standard", seed=seed, device=x.device)
    adv_u, _ = aa.run_standard_evaluation(u, y, batch_size=250)
    adv = lo + (hi - lo) * adv_u
    size = perturbation_norm(adv - x, family)
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    inside = (size <= epsilon * (1 + BUDGET_RTOL)) & (adv >= lo).flatten(1).all(1) & (
        adv <= hi).flatten(1).all(1)
    return ~(fooled & inside), size


def suite_verdicts(rows: pd.DataFrame, point: AuditPoint,
                   indices: list[int]) -> tuple[list[bool], list[bool]]:
    """(robust, evaluated) per sampled input: robust to every attack of the family at the
    budget, from the run's rows of one model; evaluated where every such attack has a row."""
    at = rows[(rows["family"] == point.family)
              & ((rows["budget"] - point.budget).abs() < 1e-9)]
    attacks = at["attack"].nunique()
    per = at.groupby("index").agg(robust=("robust", "all"), n=("attack", "nunique"))
    robust = [bool(per.at[i, "robust"]) if i in per.index else False for i in indices]
    evaluated = [bool(i in per.index and per.at[i, "n"] == attacks and attacks > 0)
                 for i in indices]
    return robust, evaluated


def audit_point(loaded: LoadedModel, rows: pd.DataFrame, point: AuditPoint, *, x: torch.Tensor,
                y: torch.Tensor, indices: list[int], request: AuditRequest, label: str,
                run_dir: str | Path) -> Path:
    """Audit one (family, budget) of one model on the sampled inputs x, y (already on the
    model's device); write and return its file (an audit already written is kept)."""
    path = audit_path(run_dir, loaded.model_id, point)
    key = _key(loaded, point, indices, request)
    if path.exists() and _existing_key(path) == key:
        return path
    import torch

    with torch.no_grad():
        clean = (loaded.model(x).argmax(1) == y).cpu()
    robust, size = autoattack_standard(loaded.model, x, y, family=point.family,
                                       epsilon=point.epsilon, seed=request.seed,
                                       bounds=loaded.bounds)
    suite_robust, evaluated = suite_verdicts(rows, point, indices)
    n = len(indices)
    table = pa.table({
        "model_id": [loaded.model_id] * n, "model_label": [label] * n,
        "family": [point.family] * n, "budget": [point.budget] * n,
        "epsilon": [point.epsilon] * n, "index": indices, "label": y.cpu().tolist(),
        "clean_correct": clean.tolist(), "aa_robust": (robust.cpu() & clean).tolist(),
        "aa_perturbation": [float(s) if math.isfinite(float(s)) else math.nan
                            for s in size.cpu().tolist()],
        "suite_robust": suite_robust, "suite_evaluated": evaluated,
    }, schema=pa.schema(list(AUDIT_COLUMNS.items())))
    meta = {"key": key, "version": AUDIT_VERSION, "request": request.to_dict(),
            "family": point.family, "budget": point.budget, "epsilon": point.epsilon,
            "autoattack": _pyautoattack_version(), "suite": str(rows["suite"].iloc[0])
            if len(rows) else ""}
    table = table.replace_schema_metadata({META_AUDIT: json.dumps(meta).encode()})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def _pyautoattack_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyautoattack")
    except PackageNotFoundError:
        return "unknown"


def suite_budgets(suite: EvalSuite) -> dict[str, list[float]]:
    """{family: the budget points its attacks run at}."""
    out: dict[str, set[float]] = {}
    for a in suite.attacks:
        out.setdefault(a.family, set()).add(round(float(a.budget), 12))
    return {f: sorted(v) for f, v in out.items()}


#: AutoAttack parameters that count work (a suite may run more of it than the standard version)
_EFFORT = ("n_iter", "n_restarts", "n_target_classes", "n_queries")


def _covers(params: dict[str, Any], standard: dict[str, Any]) -> bool:
    return all(params.get(k) is not None and params[k] >= v if k in _EFFORT else params.get(k) == v
               for k, v in standard.items())


def standard_coverage(suite: EvalSuite) -> list[str]:
    """What the suite lacks to run every component of AutoAttack's standard version, with at
    least its settings, for each l_p family of its groups at each of its budget points (the
    standard ensemble itself, ``version: standard``, covers its point); [] when nothing.

    This is the design half of "at least as strong as AutoAttack": the components run with
    their own random starts, so an input that only one of several seeds breaks can still differ
    (``mpo audit`` measures it)."""
    from jobs.attacks.autoattack.spec import (
        AUTOATTACK_ATTACKS,
        AutoAttackSpec,
        AutoAttackStandardSpec,
        standard_settings,
    )

    families = [f for g in suite.groups.values() for f in g.get("families", ()) if f in LP_FAMILIES]
    missing = []
    for family in dict.fromkeys(families):
        for budget in suite_budgets(suite).get(family, []):
            specs = [a.spec for a in suite.attacks
                     if a.family == family and abs(a.budget - budget) < 1e-9]
            if any(isinstance(s, AutoAttackStandardSpec) for s in specs):
                continue
            for name in AUTOATTACK_ATTACKS:
                standard = standard_settings(name, family)
                if not any(isinstance(s, AutoAttackSpec) and s.attack == name
                           and _covers(dict(s.params), standard) for s in specs):
                    settings = ", ".join(f"{k} {v}" for k, v in standard.items())
                    missing.append(f"{family} at budget {budget:g}: AutoAttack {name} ({settings})")
    return missing


def model_source(rf: RunFolder, trial: TrialEntry) -> str | Path | ExternalModel:
    """Where a run's model comes from: an external model's spec, the checkpoint ``mpo eval``
    recorded, or the sweep trial's own checkpoint."""
    from jobs.external import external_spec

    external = external_spec(trial.config)
    if external is not None:
        return external
    if trial.source:
        return Path(trial.source)
    path = rf.trial_dir(trial.model_id) / "checkpoint.pt"
    if not path.exists():
        raise RunFolderError(f"{rf.path}: model {trial.label} ({trial.model_id}) has no "
                             f"checkpoint ({path}) to audit; finish its training first "
                             "(`mpo sweep --resume`)")
    return path


def audit_model(model: str | Path | ExternalModel | LoadedModel, suite: EvalSuite,
                rows: pd.DataFrame, *, request: AuditRequest, run_dir: str | Path, n_test: int,
                families: Sequence[str], budgets: dict[str, list[float]] | None = None,
                data_dir: str | Path | None = None, device: str | None = None,
                label: str | None = None, points: Sequence[AuditPoint] | None = None) -> list[Path]:
    """Audit one model of a run: every (family, budget) point (``points``, default all that
    ``request`` asks for of the l_p ``families``) on the request's sample of the first
    ``n_test`` test points; ``rows``: the model's results rows (the suite's verdicts);
    ``budgets``: each family's budget points (default: the suite's attacks')."""
    from jobs.data import load_split
    from jobs.datasets import check_auditable
    from jobs.evaluation import load_model

    check_auditable(suite.dataset, field=f"audit of {label or 'the model'}")
    loaded = load_model(model, suite, device, label=label)
    indices = sample_indices(n_test, request.n, request.seed)
    x_all, y_all = load_split(suite.dataset, "test", data_dir=data_dir, n=n_test, seed=suite.seed,
                              params=suite.test_params())
    x, y = x_all[indices].to(loaded.device), y_all[indices].to(loaded.device)
    todo = points if points is not None else audit_points(
        suite.full_radius, budgets if budgets is not None else suite_budgets(suite), families,
        request)
    return [audit_point(loaded, rows, p, x=x, y=y, indices=indices, request=request,
                        label=label or loaded.label or loaded.model_id, run_dir=run_dir)
            for p in todo]


def suite_from_record(record: dict[str, Any]) -> tuple[EvalSuite, dict[str, list[float]]]:
    """The suite a results file's metadata (``mpo.suite``) records, without its attacks (what
    an audit needs: the dataset and its test split, the full radii and groups), and each
    family's budget points."""
    from jobs.suite import EvalSuite

    budgets: dict[str, set[float]] = {}
    for a in record.get("attacks") or ():
        budgets.setdefault(str(a.get("family")), set()).add(round(float(a.get("budget", 1.0)), 12))
    suite = EvalSuite(
        name=str(record.get("name", "")), dataset=str(record.get("dataset", "")), attacks=[],
        groups={g: {"families": list(f), "affine": list((record.get("affine") or {}).get(g, []))}
                for g, f in (record.get("groups") or {}).items()},
        seed=int(record.get("seed", 0)), n_test=int(record.get("n_test", 1000)),
        dataset_params=dict(record.get("dataset_params") or {}),
        full_radius={str(k): float(v) for k, v in (record.get("full_radius") or {}).items()})
    return suite, {f: sorted(v) for f, v in budgets.items()}
