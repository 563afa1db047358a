"""Build synthetic run folders (the layout `mpo sweep` writes) for analysis and report tests.

Two levels:
- ``write_shard`` writes one results parquet file from explicit per-input outcomes, for tests
  with hand-computed answers;
- ``build_run_folder`` writes a whole realistic run (run.json, grid.yaml, manifest.json,
  trials/*, results/*) for a preset group, with outcomes drawn so that the paper's qualitative
  picture holds (Adv_max most robust on the union, a gradient-free l1 attack revealing masking
  for Adv_inf, an epsilon sweep for Adv_max, an affine attack stronger than the union).

Files follow results schema version 3: rows have ``broken_by`` and ``example``, and the suite metadata states
its ``budgets_protocol``, ``radii``, ``full_radius`` and each attack's ``base`` (the contract
in jobs.schema).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
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
    #: the training cost record (``jobs.train_cost.training_cost``) the model metadata carries
    train_cost: dict[str, Any] | None = None

    def snapshot(self) -> dict[str, Any]:
        if self.config:
            return self.config
        params = TOY_PARAMS if self.dataset == "toy" else {}
        out = {
            "dataset": {"name": self.dataset, "params": params},
            "model": {"name": "linear" if self.dataset == "toy" else "mnist_cnn"},
            "strategy": self.strategy,
            "train_attacks": [{"family": f} for f in self.train_families],
            "seed": self.seed,
        }
        if self.train_cost is not None:
            out["train_cost"] = self.train_cost
        return out


@dataclass(frozen=True)
class AttackSpec:
    name: str
    family: str
    kind: str = "first-order"
    epsilon: float = 1.0
    budget: float = 1.0
    #: the attack's spec as the suite metadata records it (default: ``default_spec``)
    spec: dict[str, Any] | None = None
    #: the full-budget attack this one is a copy of (default: the name before "@")
    base: str = ""
    #: an affine attack's radius per component family (NaN for rt)
    parts_epsilon: tuple[float, ...] = ()

    def suite_entry(self) -> dict[str, Any]:
        """This attack as an entry of the ``mpo.suite`` metadata's ``attacks``."""
        return {"name": self.name, "family": self.family, "kind": self.kind,
                "spec": self.spec or default_spec(self), "budget": self.budget,
                "epsilon": self.epsilon * self.budget,
                "base": self.base or self.name.split("@")[0]}

    def at(self, budget: float) -> AttackSpec:
        """The copy of this full-budget attack at ``budget`` (named like jobs.suite's copies)."""
        return dataclasses.replace(self, name=f"{self.name}@{budget:.6g}", budget=budget,
                                   base=self.name)


def default_spec(attack: AttackSpec) -> dict[str, Any]:
    """A plausible spec for a synthetic attack, shaped like jobs.attacks' canonical specs."""
    if attack.family == "rt":
        return {"type": "rt", "spatial_limits": [3, 3, 30], "grid_granularity": [3, 3, 11],
                "random_tries": -1}
    if "+" in attack.family:
        families = attack.family.split("+")
        radii = attack.parts_epsilon or (math.nan,) * len(families)
        parts = [default_spec(AttackSpec("", f, attack.kind, eps))
                 for f, eps in zip(families, radii, strict=True)]
        return {"type": "affine", "reps": 1, "weight": None,
                "attacks": [{**p, "k": 20} if p["type"] != "rt" else p for p in parts]}
    if attack.kind == "gradient-free":
        return {"type": "foolbox", "attack": f"pointwise_{attack.family}",
                "epsilon": attack.epsilon, "init_steps": 1000}
    return {"type": attack.family, "epsilon": attack.epsilon, "k": 40, "reps": 2}


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
    broken_by: Sequence[str] | None = None,
) -> pa.Table:
    """One shard's rows; input ``start + i`` has outcome (clean_correct[i], fooled[i]).

    ``broken_by`` (per input) overrides what broke a non-robust input; by default "clean" for a
    clean-misclassified input, else the attack's name ("" for robust inputs).
    """
    clean = np.asarray(clean_correct, dtype=bool)
    fool = np.asarray(fooled, dtype=bool)
    if clean.shape != fool.shape:
        raise ValueError("clean_correct and fooled must have the same length")
    n = len(clean)
    robust = clean & ~fool
    if broken_by is None:
        broken_by = ["" if r else ("clean" if not c else attack.name)
                     for r, c in zip(robust, clean, strict=True)]
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
        "suite": [(suite_extra or {}).get("name", "synthetic")] * n,
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
        "robust": robust.tolist(),
        "broken_by": list(broken_by),
        "example": ["best"] * n,
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
    schema = SCHEMA
    if schema_version is not None:
        meta[META_SCHEMA_VERSION] = str(schema_version).encode()
        if schema_version == 2:  # version 2 had no ``example`` column
            del cols["example"]
            schema = pa.schema([f for f in SCHEMA if f.name != "example"])
    return pa.Table.from_pydict(cols, schema=schema.with_metadata(meta))


def write_shard(run_dir: Path, model: ModelSpec, attack: AttackSpec, **kwargs: Any) -> Path:
    """Write ``shard_table(...)`` to ``run_dir/results/<model_id>/<attack>__<start>-<stop>``."""
    table = shard_table(model, attack, **kwargs)
    start = kwargs.get("start", 0)
    path = run_dir / "results" / model.model_id / f"{attack.name}__{start}-{start + table.num_rows}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


#: Display labels of the multi-perturbation strategies (as the grids name them).
STRATEGY_LABEL = {"avg": "Adv_avg", "max": "Adv_max", "msd": "Adv_msd", "eat": "Adv_eat",
                  "random": "Adv_rand"}


def preset_models(preset: str, extra_strategies: Sequence[str] = ()) -> list[ModelSpec]:
    """Nat, one single-perturbation model per family, Adv_avg and Adv_max, then one model per
    ``extra_strategies`` (msd, eat, random) trained on every family of the preset."""
    dataset, group, families, _ = PRESETS[preset]
    specs = [ModelSpec(f"{group}-nat", "Nat", "nat", (), (group,), dataset)]
    for fam in families:
        specs.append(ModelSpec(f"{group}-{fam}", FAMILY_LABEL[fam], "single", (fam,), (group,),
                               dataset))
    for strategy in ("avg", "max", *extra_strategies):
        specs.append(ModelSpec(f"{group}-{strategy}", STRATEGY_LABEL[strategy], strategy,
                               families, (group,), dataset))
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
        out.append(AttackSpec(f"affine_{aff.replace('+', '_')}", aff, "first-order", math.nan,
                              parts_epsilon=tuple(eps[f] for f in aff.split("+"))))
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


def sweep_copies(
    attacks: Sequence[AttackSpec], families: Sequence[str], *, protocol: str,
    radii: Mapping[str, Sequence[float]],
) -> list[AttackSpec]:
    """The copies of the full-budget attacks below (or beyond) the full budget: at
    ``SWEEP_BUDGETS`` and at each radius of ``radii`` (absolute, l_p families; 0 is the clean
    point and has no attack). The "reduced" protocol copies the first-order attacks only, the
    "full" one every attack of the family."""
    out = []
    for a in attacks:
        if a.family not in families or (protocol == "reduced" and a.kind != "first-order"):
            continue
        budgets = dict.fromkeys(SWEEP_BUDGETS)
        budgets.update(dict.fromkeys(r / a.epsilon for r in radii.get(a.family, ()) if r > 0))
        out += [a.at(b) for b in budgets if not math.isclose(b, 1.0)]
    return out


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
    protocol: str = "reduced",
    sweep_strategies: Sequence[str] = ("max",),
    radii: Mapping[str, Sequence[float]] | None = None,
    extra_strategies: Sequence[str] = (),
    train_costs: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Write a realistic run folder under ``root`` and return it.

    ``drop_shards`` and ``old_schema_shards`` name shards as (model_id, attack, start): the
    first are listed in the manifest but not written, the second written with schema version 0.
    ``failed_trials`` are model ids whose trial.json says ERROR and that have no results.
    The models of ``sweep_strategies`` are also evaluated below the full budget
    (``sweep_copies`` with ``protocol`` and ``radii``, which the suite metadata states).
    ``train_costs`` maps a strategy to its (forward, backward) passes per training example,
    recorded in the model metadata and trial.json of its models.
    """
    dataset, group, families, affine = PRESETS[preset]
    rng = np.random.default_rng(seed)
    run_dir = Path(root)
    run_dir.mkdir(parents=True, exist_ok=True)
    models = preset_models(preset, extra_strategies)
    if train_costs:
        models = [dataclasses.replace(m, train_cost=_cost_record(*train_costs[m.strategy]))
                  if m.strategy in train_costs else m for m in models]
    attacks = preset_attacks(preset)
    copies = sweep_copies(attacks, families, protocol=protocol, radii=radii or {})
    suite_groups = {group: {"families": list(families), "affine": list(affine)}}
    suite_extra = {
        "budgets_protocol": protocol,
        "radii": {f: list(r) for f, r in (radii or {}).items()},
        "full_radius": {f: EPSILON[dataset][f] for f in families if f != "rt"},
        "attacks": [a.suite_entry() for a in (*attacks, *copies)],
    }
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
        trial = {"state": "ERROR" if failed else "DONE", "wall_seconds": 12.5}
        if model.train_cost is not None:
            trial["train_cost"] = model.train_cost
        (trial_dir / "trial.json").write_text(json.dumps(trial))
        # One latent robustness level per input and family: robust iff u < rate.
        latent = {fam: rng.random(n) for fam in (*families, *affine)}
        suite = list(attacks)
        if model.strategy in sweep_strategies:
            suite += copies
        for attack in suite:
            rate = _robust_rate(model, attack.family)
            u = latent[attack.family]
            if "+" in attack.family:  # the affine attack is at least as strong as the union
                u = np.maximum.reduce([u, *(latent[c] for c in attack.family.split("+"))])
            fooled = u >= rate
            if attack.budget != 1.0:  # a smaller radius fools fewer inputs, a larger one more
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
                            suite_extra=suite_extra,
                            schema_version=0 if key in old_schema_shards else None)
    if manifest:
        (run_dir / "manifest.json").write_text(json.dumps({
            "groups": {group: {"dataset": dataset, "families": list(families),
                               "affine": list(affine), "models": [m.model_id for m in models]}},
            "trials": trials,
            "shards": shards,
        }))
    return run_dir


def _cost_record(fwd: float, bwd: float) -> dict[str, Any]:
    """A ``jobs.train_cost.training_cost``-shaped record with these passes per example."""
    return {"fwd_per_example": fwd, "bwd_per_example": bwd, "train_seconds": 60.0,
            "examples": 1000, "device": "cpu (2 threads)"}
