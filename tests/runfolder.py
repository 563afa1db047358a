"""Build synthetic run folders (the layout `mpo sweep` writes) for analysis and report tests.

Two levels:
- ``write_shard`` writes one results parquet file from explicit per-input outcomes, for tests
  with hand-computed answers;
- ``build_run_folder`` writes a whole realistic run (run.json, grid.yaml, manifest.json,
  trials/*, results/*) for a preset group, with outcomes drawn so that the paper's qualitative
  picture holds (Adv_max most robust on the union, a gradient-free l1 attack revealing masking
  for Adv_inf, an epsilon sweep for Adv_max, an affine attack stronger than the union).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.schema import META_SCHEMA_VERSION, SCHEMA, make_metadata

FAMILY_LABEL = {"linf": "Adv_inf", "l1": "Adv_1", "l2": "Adv_2", "rt": "Adv_RT"}
EPSILON = {
    "toy": {"linf": 0.4, "l1": 2.0, "l2": 1.0, "rt": math.nan},
    "mnist": {"linf": 0.3, "l1": 10.0, "l2": 2.0, "rt": math.nan},
}
TOY_PARAMS = {"d": 99, "alpha": 2.0, "p0": 0.9, "x0": "sign"}

#: preset name -> (dataset, group name, families, affine families)
PRESETS = {
    "toy": ("toy", "toy", ("linf", "l1"), ("linf+l1",)),
    "mnist-lp": ("mnist", "mnist-lp", ("linf", "l1", "l2"), ()),
    "mnist-rt": ("mnist", "mnist-rt", ("linf", "rt"), ("linf+rt",)),
}


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    label: str
    strategy: str
    train_families: tuple[str, ...] = ()
    groups: tuple[str, ...] = ("toy",)
    dataset: str = "toy"
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        if self.config:
            return self.config
        params = TOY_PARAMS if self.dataset == "toy" else {}
        return {
            "dataset": {"name": self.dataset, "params": params},
            "model": {"name": "linear" if self.dataset == "toy" else "mnist_cnn"},
            "strategy": self.strategy,
            "train_attacks": [{"family": f} for f in self.train_families],
            "seed": self.seed,
        }


@dataclass(frozen=True)
class AttackSpec:
    name: str
    family: str
    kind: str = "first-order"
    epsilon: float = 1.0
    budget: float = 1.0


def shard_table(
    model: ModelSpec,
    attack: AttackSpec,
    *,
    clean_correct: Sequence[bool],
    fooled: Sequence[bool],
    start: int = 0,
    suite_groups: dict[str, Any] | None = None,
    suite_extra: dict[str, Any] | None = None,
    schema_version: int | None = None,
) -> pa.Table:
    """One shard's rows; input ``start + i`` has outcome (clean_correct[i], fooled[i])."""
    clean = np.asarray(clean_correct, dtype=bool)
    fool = np.asarray(fooled, dtype=bool)
    if clean.shape != fool.shape:
        raise ValueError("clean_correct and fooled must have the same length")
    n = len(clean)
    labels = np.arange(start, start + n) % 2
    clean_pred = np.where(clean, labels, 1 - labels)
    adv_pred = np.where(fool, 1 - labels, clean_pred)
    cols: dict[str, Any] = {
        "model_id": [model.model_id] * n,
        "model_label": [model.label] * n,
        "dataset": [model.dataset] * n,
        "strategy": [model.strategy] * n,
        "train_attacks": [json.dumps(list(model.train_families))] * n,
        "groups": [json.dumps(list(model.groups))] * n,
        "seed": [model.seed] * n,
        "checkpoint_digest": ["0" * 64] * n,
        "suite": ["synthetic"] * n,
        "attack": [attack.name] * n,
        "family": [attack.family] * n,
        "kind": [attack.kind] * n,
        "epsilon": [attack.epsilon * attack.budget] * n,
        "budget": [attack.budget] * n,
        "attack_spec": [json.dumps({"name": attack.name, "family": attack.family})] * n,
        "eval_seed": [0] * n,
        "index": list(range(start, start + n)),
        "label": labels.tolist(),
        "clean_pred": clean_pred.tolist(),
        "adv_pred": adv_pred.tolist(),
        "clean_correct": clean.tolist(),
        "fooled": fool.tolist(),
        "robust": (clean & ~fool).tolist(),
        "perturbation": [0.0] * n,
        "loss": [0.0] * n,
        "shard_start": [start] * n,
        "shard_stop": [start + n] * n,
        "shard_seconds": [0.5] * n,
    }
    meta = make_metadata(
        model=model.snapshot(),
        suite={"name": "synthetic", "groups": suite_groups or {}, **(suite_extra or {})},
        shard={"attack": attack.name, "start": start, "stop": start + n, "content_key": "x"},
    )
    if schema_version is not None:
        meta[META_SCHEMA_VERSION] = str(schema_version).encode()
    return pa.Table.from_pydict(cols, schema=SCHEMA.with_metadata(meta))


def write_shard(run_dir: Path, model: ModelSpec, attack: AttackSpec, **kwargs: Any) -> Path:
    """Write ``shard_table(...)`` to ``run_dir/results/<model_id>/<attack>__<start>-<stop>``."""
    table = shard_table(model, attack, **kwargs)
    start = kwargs.get("start", 0)
    path = run_dir / "results" / model.model_id / f"{attack.name}__{start}-{start + table.num_rows}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def preset_models(preset: str) -> list[ModelSpec]:
    dataset, group, families, _ = PRESETS[preset]
    specs = [ModelSpec(f"{group}-nat", "Nat", "nat", (), (group,), dataset)]
    for fam in families:
        specs.append(ModelSpec(f"{group}-{fam}", FAMILY_LABEL[fam], "single", (fam,), (group,),
                               dataset))
    for strategy in ("avg", "max"):
        specs.append(ModelSpec(f"{group}-{strategy}", f"Adv_{strategy}", strategy, families,
                               (group,), dataset))
    return specs


def preset_attacks(preset: str) -> list[AttackSpec]:
    """The full-budget suite: first-order attacks per family, a gradient-free l1 attack, a grid
    rt attack, and the affine attack."""
    dataset, _, families, affine = PRESETS[preset]
    eps = EPSILON[dataset]
    out = []
    for fam in families:
        if fam == "rt":
            out.append(AttackSpec("rt_grid", "rt", "grid", math.nan))
            continue
        out.append(AttackSpec(f"pgd_{fam}", fam, "first-order", eps[fam]))
        if fam == "l1":
            out.append(AttackSpec("pointwise_l1", "l1", "gradient-free", eps[fam]))
    for aff in affine:
        out.append(AttackSpec(f"affine_{aff.replace('+', '_')}", aff, "first-order", math.nan))
    return out


def _robust_rate(model: ModelSpec, family: str) -> float:
    """Synthetic per-family robust accuracy, shaped like the paper's Table 1."""
    if model.strategy == "nat":
        return 0.05
    if model.strategy == "single":
        return 0.85 if model.train_families[0] == family else 0.25
    if "+" in family:
        return 0.6
    return 0.75 if model.strategy == "max" else 0.7


SWEEP_BUDGETS = (0.25, 0.5, 0.75)


def build_run_folder(
    root: Path,
    *,
    preset: str = "toy",
    n: int = 200,
    shard_size: int = 100,
    seed: int = 0,
    manifest: bool = True,
    drop_shards: Sequence[tuple[str, str, int]] = (),
    failed_trials: Sequence[str] = (),
    old_schema_shards: Sequence[tuple[str, str, int]] = (),
) -> Path:
    """Write a realistic run folder under ``root`` and return it.

    ``drop_shards`` and ``old_schema_shards`` name shards as (model_id, attack, start): the
    first are listed in the manifest but not written, the second written with schema version 0.
    ``failed_trials`` are model ids whose trial.json says ERROR and that have no results.
    """
    dataset, group, families, affine = PRESETS[preset]
    rng = np.random.default_rng(seed)
    run_dir = Path(root)
    run_dir.mkdir(parents=True, exist_ok=True)
    models = preset_models(preset)
    attacks = preset_attacks(preset)
    suite_groups = {group: {"families": list(families), "affine": list(affine)}}
    (run_dir / "run.json").write_text(json.dumps({
        "name": f"synthetic-{preset}", "created": "2025-01-01T00:00:00Z", "mpo_version": "0.1.0",
        "git_commit": "deadbeef" * 5, "versions": {"torch": "2.x", "ray": "2.x", "python": "3.x"},
        "hardware": {"cpus": 2, "gpus": 0}, "command": f"mpo sweep {preset}",
    }))
    (run_dir / "grid.yaml").write_text(f"name: {preset}\ndataset: {dataset}\n")
    shards: list[dict[str, Any]] = []
    trials: dict[str, Any] = {}
    clean = rng.random(n) < 0.97
    for model in models:
        trials[model.model_id] = {"label": model.label, "dataset": dataset,
                                  "strategy": model.strategy, "groups": [group],
                                  "config": model.snapshot()}
        trial_dir = run_dir / "trials" / model.model_id
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / "config.json").write_text(json.dumps(model.snapshot()))
        failed = model.model_id in failed_trials
        (trial_dir / "trial.json").write_text(json.dumps(
            {"state": "ERROR" if failed else "DONE",
             "wall_seconds": 12.5}))
        # One latent robustness level per input and family: robust iff u < rate.
        latent = {fam: rng.random(n) for fam in (*families, *affine)}
        suite = list(attacks)
        if model.strategy == "max":
            suite += [AttackSpec(f"{a.name}@{t}", a.family, a.kind, a.epsilon, t)
                      for a in attacks if a.family in families and a.kind == "first-order"
                      for t in SWEEP_BUDGETS]
        for attack in suite:
            rate = _robust_rate(model, attack.family)
            u = latent[attack.family]
            if "+" in attack.family:  # the affine attack is at least as strong as the union
                u = np.maximum.reduce([u, *(latent[c] for c in attack.family.split("+"))])
            fooled = u >= rate
            if attack.budget < 1.0:
                fooled = u >= rate + (1 - rate) * (1 - attack.budget)
            if attack.kind == "first-order" and model.label == "Adv_inf" and attack.family == "l1":
                fooled = fooled & (u >= rate + 0.5 * (1 - rate))  # misses half: masking
            for start in range(0, n, shard_size):
                stop = min(n, start + shard_size)
                shards.append({"model_id": model.model_id, "attack": attack.name,
                               "start": start, "stop": stop})
                key = (model.model_id, attack.name, start)
                if failed or key in drop_shards:
                    continue
                write_shard(run_dir, model, attack, clean_correct=clean[start:stop],
                            fooled=fooled[start:stop], start=start, suite_groups=suite_groups,
                            schema_version=0 if key in old_schema_shards else None)
    if manifest:
        (run_dir / "manifest.json").write_text(json.dumps({
            "groups": {group: {"dataset": dataset, "families": list(families),
                               "affine": list(affine), "models": [m.model_id for m in models]}},
            "trials": trials,
            "shards": shards,
        }))
    return run_dir
