"""Per-example evaluation of a checkpoint against an attack suite, written to parquet.

Suites
------
A suite is a YAML file (built-in ones live in ``jobs/suites/<name>.yaml``; ``load_suite`` takes a
name or a path)::

    name: mnist-mini                 # defaults to the file name
    dataset: mnist                   # checkpoints of another dataset are refused
    dataset_params: {}               # toy only: d, alpha, p0, x0 must match the checkpoint's
    seed: 0                          # seeds every shard's attack generator (and toy's test split)
    n_test: 200                      # default number of test points (the first N)
    description: "..."
    groups:                          # how the report groups families (union / average)
      mnist-lp: {families: [linf, l1, l2], affine: [linf+l1]}
    attacks:
      - name: linf-pgd               # unique; letters, digits and . _ - + @ only
        kind: first-order            # first-order | gradient-free | grid
        spec: {type: linf, epsilon: 0.3, k: 40, reps: 2}   # as jobs.attacks.make_attack takes it
        family: linf                 # optional: checked against the attack's own family
        epsilon: 0.3                 # optional: radius of the in-ball rule (default: the attack's)
        budgets: [0.25, 0.5, 0.75]   # optional: also add linf-pgd@0.25 ... with scaled radii

Every attack of the suite is evaluated at ``budget`` 1.0; ``budgets`` adds copies of the attack
whose radius (and RT limits) is scaled by each fraction, for the Figure-1 style sweeps.

Cascades (``jobs.cascade``): a suite-level ``cascade: true`` or a per-attack
``cascade: true | false | [names]`` runs an attack only on the inputs still robust after the
earlier attacks of the same family ball (and, for ``true``, the same kind); skipped inputs keep
complete rows recorded as fooled by the earlier attack (named in the file's metadata).

The in-ball rule
----------------
An attack result counts as fooling the model only if the perturbation lies inside the family's
ball, measured here and not trusted from the attack: for l_inf, l_2, l_1 the norm of
``x_adv - x`` must be at most ``epsilon * (1 + 1e-5)``; for ``linf+l1`` the gauge of the
Minkowski sum of the two balls at ``x_adv - x`` must be at most ``1 + 1e-5``; for ``rt`` and
``linf+rt`` the attack's own measure (``AttackResult.norm``, a fraction of the limits) must be at
most ``1 + 1e-5``. The ``epsilon`` column is the radius for l_p families and NaN for rt and affine
families, whose ``perturbation`` column is a fraction of the budget.

Files
-----
``out_dir/results/<model_id>/<attack>__<start>-<stop>.parquet``, one row per test input, columns
and metadata per ``jobs.schema``. Written to a temporary name and renamed, so a killed process
never leaves a partial ``.parquet``. Each file's metadata holds a content key (checkpoint digest,
attack spec, radius, shard, seed, label, groups, schema version): a shard whose file already has
that key is not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from jobs.errors import MpoError
from jobs.io import load_yaml
from jobs.schema import COLUMNS, SCHEMA, SCHEMA_VERSION, make_metadata

KINDS = ("first-order", "gradient-free", "grid")
LP_FAMILIES = ("linf", "l2", "l1")
IN_BALL_TOLERANCE = 1e-5
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@-]*$")


class SuiteError(MpoError, ValueError):
    """An invalid suite file or an unknown suite/attack name."""


class SuiteMismatchError(MpoError, ValueError):
    """A checkpoint that does not belong to the suite's dataset."""


@dataclass(frozen=True)
class SuiteAttack:
    name: str
    family: str
    kind: str
    spec: dict[str, Any]
    budget: float = 1.0
    epsilon: float | None = None
    after: tuple[str, ...] = ()  # cascade: attacked only where these left the input robust

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "family": self.family,
            "kind": self.kind,
            "spec": self.spec,
            "budget": self.budget,
            "epsilon": self.epsilon,
        }
        if self.after:
            out["after"] = list(self.after)
        return out


@dataclass(frozen=True)
class EvalSuite:
    name: str
    dataset: str
    attacks: list[SuiteAttack]
    groups: dict[str, dict[str, list[str]]]
    seed: int = 0
    n_test: int = 1000
    dataset_params: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def attack(self, name: str) -> SuiteAttack:
        for a in self.attacks:
            if a.name == name:
                return a
        raise SuiteError(
            f"suite '{self.name}' has no attack '{name}'; its attacks: "
            + ", ".join(a.name for a in self.attacks)
        )

    def to_dict(self) -> dict[str, Any]:
        """The snapshot stored in results metadata; ``groups`` as {group: [families]} (the
        schema's form) and ``affine`` as {group: [affine families]}."""
        return {
            "name": self.name,
            "dataset": self.dataset,
            "dataset_params": self.dataset_params,
            "seed": self.seed,
            "n_test": self.n_test,
            "description": self.description,
            "groups": {g: list(v["families"]) for g, v in self.groups.items()},
            "affine": {g: list(v.get("affine", [])) for g, v in self.groups.items()},
            "attacks": [a.to_dict() for a in self.attacks],
        }


# ----------------------------------------------------------------------------------------------
# Suite files


def suite_names() -> list[str]:
    folder = resources.files("jobs") / "suites"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _suite_path(name_or_path: str | os.PathLike[str], dataset: str | None = None) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise SuiteError(f"suite file {path} does not exist")
        return path
    builtin = Path(str(resources.files("jobs") / "suites" / f"{name_or_path}.yaml"))
    per_dataset = [n for n in suite_names() if n.endswith(f"-{name_or_path}")]
    if not builtin.exists() and dataset is not None and f"{dataset}-{name_or_path}" in per_dataset:
        builtin = builtin.with_name(f"{dataset}-{name_or_path}.yaml")
    if not builtin.exists() and per_dataset:
        raise SuiteError(
            f"suite '{name_or_path}' exists per dataset: {', '.join(per_dataset)}; name one of "
            "them (or evaluate a checkpoint of one of these datasets)"
        )
    if not builtin.exists():
        raise SuiteError(
            f"unknown suite '{name_or_path}'; built-in suites: {', '.join(suite_names())} "
            "(or give the path of a suite YAML file)"
        )
    return builtin


def load_suite(
    name_or_path: str | os.PathLike[str] | EvalSuite, *, dataset: str | None = None
) -> EvalSuite:
    """A built-in suite by name, or a suite YAML file. Errors name the file and the field.

    With ``dataset``, a per-dataset name like ``strong`` or ``paper`` resolves to the built-in
    ``<dataset>-strong`` / ``<dataset>-paper``."""
    if isinstance(name_or_path, EvalSuite):
        return name_or_path
    path = _suite_path(name_or_path, dataset)
    data = load_yaml(path, error=SuiteError, what="suite file")
    return parse_suite(data, source=str(path), default_name=path.stem)


_SUITE_KEYS = {"name", "dataset", "dataset_params", "seed", "n_test", "description", "groups", "attacks",
               "cascade"}
_ATTACK_KEYS = {"name", "kind", "spec", "family", "epsilon", "budgets", "cascade"}


def parse_suite(data: Any, *, source: str = "suite", default_name: str = "") -> EvalSuite:
    """Validate a suite mapping (the YAML content) into an ``EvalSuite``."""
    from jobs.attacks import AttackSpecError, make_attack
    from jobs.cascade import resolve_cascades
    from jobs.config import scale_spec
    from jobs.data import DataError, dataset_info

    def fail(where: str, msg: str) -> SuiteError:
        return SuiteError(f"{source}: field '{where}': {msg}")

    if not isinstance(data, Mapping):
        raise SuiteError(f"{source}: a suite must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - _SUITE_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown field; allowed: {', '.join(sorted(_SUITE_KEYS))}")
    name = str(data.get("name") or default_name)
    if not _NAME_RE.match(name):
        raise fail("name", f"{name!r} is not a valid suite name")
    dataset = data.get("dataset")
    params = data.get("dataset_params") or {}
    try:
        info = dataset_info(dataset, params or None)
    except DataError as err:
        raise fail("dataset", str(err)) from None
    seed, n_test = data.get("seed", 0), data.get("n_test", 1000)
    for key, value in (("seed", seed), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (key == "n_test"):
            raise fail(key, f"{value!r}: must be an integer >= {int(key == 'n_test')}")

    attacks: list[SuiteAttack] = []
    raw_attacks = data.get("attacks")
    if not isinstance(raw_attacks, list) or not raw_attacks:
        raise fail("attacks", "must be a non-empty list of attacks")
    for i, entry in enumerate(raw_attacks):
        where = f"attacks[{i}]"
        if not isinstance(entry, Mapping):
            raise fail(where, f"must be a mapping, got {entry!r}")
        bad = sorted(set(entry) - _ATTACK_KEYS)
        if bad:
            raise fail(f"{where}.{bad[0]}", f"unknown field; allowed: {', '.join(sorted(_ATTACK_KEYS))}")
        aname = entry.get("name")
        if not isinstance(aname, str) or not _NAME_RE.match(aname):
            raise fail(f"{where}.name", f"{aname!r}: letters, digits and . _ - + @ only")
        kind = entry.get("kind")
        if kind not in KINDS:
            raise fail(f"{where}.kind", f"{kind!r}: must be one of {', '.join(KINDS)}")
        spec = entry.get("spec")
        try:
            attack = make_attack(spec, bounds=info.bounds)
        except AttackSpecError as err:
            raise fail(f"{where}.spec", str(err)) from None
        if entry.get("family") not in (None, attack.family):
            raise fail(f"{where}.family", f"{entry['family']!r} but the spec's family is {attack.family!r}")
        eps = entry.get("epsilon")
        if eps is not None:
            if attack.family not in LP_FAMILIES:
                raise fail(f"{where}.epsilon", f"only l_p families take a radius, not {attack.family!r}")
            if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps > 0:
                raise fail(f"{where}.epsilon", f"{eps!r}: must be a number > 0")
            eps = float(eps)
        attacks.append(SuiteAttack(aname, attack.family, kind, attack.spec, 1.0, eps))
        budgets = entry.get("budgets") or []
        if not isinstance(budgets, list):
            raise fail(f"{where}.budgets", f"{budgets!r}: must be a list of fractions in (0, 1)")
        for b in budgets:
            if isinstance(b, bool) or not isinstance(b, int | float) or not 0 < b < 1:
                raise fail(f"{where}.budgets", f"{b!r}: budgets are fractions in (0, 1)")
            scaled = make_attack(scale_spec(attack.spec, float(b)), bounds=info.bounds)
            attacks.append(
                SuiteAttack(
                    f"{aname}@{b:g}", attack.family, kind, scaled.spec, float(b),
                    None if eps is None else eps * float(b),
                )
            )
    names = [a.name for a in attacks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise fail("attacks", f"duplicate attack names {dupes}")
    cascade_all = data.get("cascade", False)
    if not isinstance(cascade_all, bool):
        raise fail("cascade", f"{cascade_all!r}: must be true or false")
    attacks = resolve_cascades(
        attacks,
        {e["name"]: (f"attacks[{i}].cascade", e.get("cascade")) for i, e in enumerate(raw_attacks)},
        default=cascade_all, fail=fail,
    )

    groups_raw = data.get("groups") or {}
    if not isinstance(groups_raw, Mapping):
        raise fail("groups", "must map a group name to {families: [...], affine: [...]}")
    present = {a.family for a in attacks}
    groups: dict[str, dict[str, list[str]]] = {}
    for g, value in groups_raw.items():
        if isinstance(value, list):
            value = {"families": value}
        if not isinstance(value, Mapping) or set(value) - {"families", "affine"}:
            raise fail(f"groups.{g}", "must be {families: [...], affine: [...]}")
        fams, aff = list(value.get("families") or []), list(value.get("affine") or [])
        for f in fams + aff:
            if f not in present:
                raise fail(f"groups.{g}", f"family {f!r} has no attack in the suite ({sorted(present)})")
        if not fams:
            raise fail(f"groups.{g}.families", "needs at least one family")
        groups[str(g)] = {"families": fams, "affine": aff}
    if not groups:
        plain = [f for f in dict.fromkeys(a.family for a in attacks) if "+" not in f]
        affine = [f for f in dict.fromkeys(a.family for a in attacks) if "+" in f]
        groups = {name: {"families": plain, "affine": affine}}
    return EvalSuite(
        name=name,
        dataset=dataset,
        attacks=attacks,
        groups=groups,
        seed=seed,
        n_test=n_test,
        dataset_params=dict(params),
        description=str(data.get("description") or ""),
    )


# ----------------------------------------------------------------------------------------------
# Shards


def plan_shards(n_test: int, shard_size: int) -> list[tuple[int, int]]:
    """``[(0, s), (s, 2s), ...]`` covering ``range(n_test)``; the last shard may be shorter."""
    if n_test < 1:
        raise ValueError(f"n_test = {n_test}: must be at least 1")
    if shard_size < 1:
        raise ValueError(f"shard_size = {shard_size}: must be at least 1")
    return [(s, min(s + shard_size, n_test)) for s in range(0, n_test, shard_size)]


def shard_path(out_dir: str | os.PathLike[str], model_id: str, attack: str, start: int, stop: int) -> Path:
    return Path(out_dir) / "results" / model_id / f"{attack}__{start}-{stop}.parquet"


def shard_seed(suite: EvalSuite, attack: str, start: int) -> int:
    """The seed of a shard's attack generator: a function of the suite seed, attack and shard."""
    digest = hashlib.sha256(f"{suite.seed}:{attack}:{start}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _toy_identity(params: Mapping[str, Any] | None) -> dict[str, Any]:
    from jobs.data import toy_params

    p = toy_params(dict(params or {}))
    return {"d": p.d, "alpha": p.alpha, "p0": p.p0, "x0": p.x0}


def check_compatible(config: Any, suite: EvalSuite, *, source: str = "checkpoint") -> None:
    """Refuse a checkpoint whose dataset (or toy distribution) differs from the suite's."""
    if config.dataset.name != suite.dataset:
        raise SuiteMismatchError(
            f"{source} was trained on dataset '{config.dataset.name}' but suite '{suite.name}' "
            f"evaluates '{suite.dataset}'; choose a {config.dataset.name} suite "
            f"(built-in: {', '.join(suite_names())})"
        )
    if suite.dataset == "toy":
        mine, theirs = _toy_identity(config.dataset.params), _toy_identity(suite.dataset_params)
        if mine != theirs:
            raise SuiteMismatchError(
                f"{source} was trained on toy data {mine} but suite '{suite.name}' "
                f"evaluates toy data {theirs}"
            )


def _test_params(suite: EvalSuite) -> dict[str, Any] | None:
    """The test split's dataset parameters: the suite's own (toy), so that every model of a suite
    sees the same test points whatever its training split sizes were (checked compatible)."""
    return dict(suite.dataset_params) if suite.dataset == "toy" else None


# ----------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class _Loaded:
    path: Path
    digest: str
    model: Any
    config: Any
    model_id: str
    device: Any


def _load(checkpoint_path: str | os.PathLike[str], suite: EvalSuite, device: Any) -> _Loaded:
    from jobs.checkpoint import file_digest
    from jobs.training import load_trained, resolve_device

    path = Path(checkpoint_path)
    dev = resolve_device(device)
    model, config, _ = load_trained(path, device=dev)
    check_compatible(config, suite, source=f"checkpoint {path}")
    return _Loaded(path, file_digest(path), model, config, config.model_id(), dev)


def _content_key(
    loaded: _Loaded, suite: EvalSuite, attack: SuiteAttack, start: int, stop: int,
    label: str, groups: list[str],
) -> str:
    body = {
        "schema_version": SCHEMA_VERSION,
        "checkpoint_digest": loaded.digest,
        "suite": suite.name,
        "dataset_params": _toy_identity(suite.dataset_params) if suite.dataset == "toy" else {},
        "attack": attack.to_dict(),
        "start": start,
        "stop": stop,
        "eval_seed": shard_seed(suite, attack.name, start),
        "label": label,
        "groups": groups,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _shard_key(
    loaded: _Loaded, suite: EvalSuite, attack: SuiteAttack, start: int, stop: int,
    label: str, groups: list[str],
) -> str:
    """The content key, chained with those of the shards a cascaded attack depends on."""
    from jobs.cascade import chain_key

    key = _content_key(loaded, suite, attack, start, stop, label, groups)
    return chain_key(key, [
        _shard_key(loaded, suite, suite.attack(a), start, stop, label, groups) for a in attack.after
    ])


def existing_content_key(path: str | os.PathLike[str]) -> str | None:
    """The content key in a results file's metadata, or None (absent or unreadable file)."""
    import pyarrow.parquet as pq

    from jobs.schema import META_SHARD

    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[META_SHARD].decode()).get("content_key")
    except (OSError, KeyError, ValueError):
        return None


def _in_ball(attack_obj: Any, entry: SuiteAttack, x: Any, result: Any) -> tuple[Any, Any, float]:
    """(size [B], inside [B] bool, epsilon column value) under the in-ball rule."""
    import torch

    from jobs.attacks.norms import perturbation_norm

    tol = 1.0 + IN_BALL_TOLERANCE
    delta = (result.x_adv - x).detach()
    if entry.family in LP_FAMILIES:
        eps = entry.epsilon if entry.epsilon is not None else float(attack_obj.epsilon)
        size = perturbation_norm(delta, entry.family)
        return size, size <= eps * tol, eps
    if entry.family == "linf+l1":
        subs = {s["type"]: float(s["epsilon"]) for s in entry.spec["attacks"]}
        size = perturbation_norm(delta, "linf+l1", epsilons=(subs["linf"], subs["l1"]))
        return size, size <= tol, math.nan
    size = torch.as_tensor(result.norm, device=x.device).to(x.dtype)
    return size, size <= tol, math.nan


def _attack_batches(
    loaded: _Loaded, attack_obj: Any, entry: SuiteAttack, x: Any, y: Any, seed: int, batch_size: int,
    prior: Any = None,
) -> dict[str, list[Any]]:
    if prior is not None:
        from jobs.cascade import attack_cascaded

        return attack_cascaded(loaded.model, loaded.device, attack_obj, entry, x, y, seed,
                               batch_size, prior, _in_ball)
    import torch
    import torch.nn.functional as F

    model, dev = loaded.model, loaded.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    cols: dict[str, list[Any]] = {k: [] for k in ("clean_pred", "adv_pred", "fooled", "size", "loss")}
    eps_value = math.nan
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)
        model.eval()
        with torch.no_grad():
            clean_pred = model(xb).argmax(1)
        result = attack_obj(model, xb, yb, generator=gen)
        model.eval()
        with torch.no_grad():
            logits = model(result.x_adv.detach())
            adv_pred = logits.argmax(1)
            loss = F.cross_entropy(logits, yb, reduction="none")
        size, inside, eps_value = _in_ball(attack_obj, entry, xb, result)
        cols["clean_pred"].append(clean_pred.cpu())
        cols["adv_pred"].append(adv_pred.cpu())
        cols["fooled"].append(((adv_pred != yb) & inside).cpu())
        cols["size"].append(size.detach().double().cpu())
        cols["loss"].append(loss.double().cpu())
    out = {k: torch.cat(v).tolist() for k, v in cols.items()}
    out["epsilon"] = [eps_value]
    return out


def _evaluate_shard(
    loaded: _Loaded,
    suite: EvalSuite,
    attack_name: str,
    start: int,
    stop: int,
    out_dir: str | os.PathLike[str],
    *,
    data: tuple[Any, Any] | None,
    data_dir: str | os.PathLike[str] | None,
    download: bool,
    model_label: str | None,
    groups: Sequence[str] | None,
    batch_size: int,
) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.attacks import make_attack
    from jobs.data import load_split
    from jobs.io import atomic_write

    entry = suite.attack(attack_name)
    if not 0 <= start < stop:
        raise ValueError(f"shard [{start}, {stop}): need 0 <= start < stop")
    config = loaded.config
    label = model_label or config.label or loaded.model_id
    group_list = list(groups) if groups is not None else list(suite.groups)
    key = _shard_key(loaded, suite, entry, start, stop, label, group_list)
    path = shard_path(out_dir, loaded.model_id, entry.name, start, stop)
    if path.exists() and existing_content_key(path) == key:
        return path

    if data is None:
        data = load_split(
            suite.dataset, "test", data_dir=data_dir, download=download, n=stop, seed=suite.seed,
            params=_test_params(suite),
        )
    x_all, y_all = data
    if len(x_all) < stop:
        raise ValueError(f"shard [{start}, {stop}) needs {stop} test points, only {len(x_all)} loaded")
    x, y = x_all[start:stop], y_all[start:stop]
    attack_obj = make_attack(entry.spec, bounds=config.dataset_info().bounds)
    seed = shard_seed(suite, entry.name, start)
    t0 = time.perf_counter()
    prior, cascade_meta = None, {}
    if entry.after:
        from jobs.cascade import prior_from_rows

        frames = [
            (name, read_results([_evaluate_shard(
                loaded, suite, name, start, stop, out_dir, data=(x_all, y_all), data_dir=data_dir,
                download=download, model_label=model_label, groups=groups, batch_size=batch_size,
            )]).sort_values("index"))
            for name in entry.after
        ]
        prior = prior_from_rows(frames, stop - start)
        cascade_meta = {"cascade": {"after": list(entry.after), "broken_by": prior.broken_map(start)}}
    cols = _attack_batches(loaded, attack_obj, entry, x, y, seed, batch_size, prior)
    seconds = time.perf_counter() - t0

    n = stop - start
    labels = y.tolist()
    clean_correct = [p == t for p, t in zip(cols["clean_pred"], labels, strict=True)]
    families = config.families()
    columns: dict[str, list[Any]] = {
        "model_id": [loaded.model_id] * n,
        "model_label": [label] * n,
        "dataset": [suite.dataset] * n,
        "strategy": [config.strategy] * n,
        "train_attacks": [json.dumps(families)] * n,
        "groups": [json.dumps(group_list)] * n,
        "seed": [config.seed] * n,
        "checkpoint_digest": [loaded.digest] * n,
        "suite": [suite.name] * n,
        "attack": [entry.name] * n,
        "family": [entry.family] * n,
        "kind": [entry.kind] * n,
        "epsilon": cols["epsilon"] * n,
        "budget": [entry.budget] * n,
        "attack_spec": [json.dumps(entry.spec, sort_keys=True)] * n,
        "eval_seed": [seed] * n,
        "index": list(range(start, stop)),
        "label": labels,
        "clean_pred": cols["clean_pred"],
        "adv_pred": cols["adv_pred"],
        "clean_correct": clean_correct,
        "fooled": cols["fooled"],
        "robust": [c and not f for c, f in zip(clean_correct, cols["fooled"], strict=True)],
        "perturbation": cols["size"],
        "loss": cols["loss"],
        "shard_start": [start] * n,
        "shard_stop": [stop] * n,
        "shard_seconds": [seconds] * n,
    }
    assert list(columns) == list(COLUMNS)
    metadata = make_metadata(
        model={
            "model_id": loaded.model_id,
            "label": label,
            "checkpoint_digest": loaded.digest,
            "config": config.to_dict(),
        },
        suite=suite.to_dict(),
        shard={"attack": entry.name, "start": start, "stop": stop, "content_key": key,
               **cascade_meta},
    )
    table = pa.table(columns, schema=SCHEMA.with_metadata(metadata))
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def evaluate_shard(
    checkpoint_path: str | os.PathLike[str],
    suite: EvalSuite | str,
    attack_name: str,
    start: int,
    stop: int,
    out_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: Any = None,
    model_label: str | None = None,
    groups: Sequence[str] | None = None,
    download: bool = False,
    batch_size: int = 256,
) -> Path:
    """Evaluate test points ``[start, stop)`` against one attack; write and return the shard file.

    Idempotent: a file with the same content key is returned without recomputing. Raises
    ``SuiteMismatchError`` for a checkpoint of another dataset, ``SuiteError`` for an unknown
    attack name.
    """
    suite = load_suite(suite)
    suite.attack(attack_name)
    loaded = _load(checkpoint_path, suite, device)
    return _evaluate_shard(
        loaded, suite, attack_name, start, stop, out_dir, data=None, data_dir=data_dir,
        download=download, model_label=model_label, groups=groups, batch_size=batch_size,
    )


def evaluate(
    checkpoint_path: str | os.PathLike[str],
    suite: EvalSuite | str,
    *,
    n_test: int | None = None,
    out_dir: str | os.PathLike[str],
    shard_size: int = 100,
    data_dir: str | os.PathLike[str] | None = None,
    device: Any = None,
    model_label: str | None = None,
    groups: Sequence[str] | None = None,
    download: bool = False,
    attacks: Sequence[str] | None = None,
    batch_size: int = 256,
    on_shard: Any = None,
) -> list[Path]:
    """Every attack (or the named ``attacks``) x every shard of the first ``n_test`` points
    (default: the suite's ``n_test``), sequentially. ``on_shard(attack, start, stop, path)``
    runs after each shard (for progress bars)."""
    from jobs.data import load_split

    suite = load_suite(suite)
    names = list(attacks) if attacks is not None else [a.name for a in suite.attacks]
    for name in names:
        suite.attack(name)
    n = n_test if n_test is not None else suite.n_test
    shards = plan_shards(n, shard_size)
    loaded = _load(checkpoint_path, suite, device)
    data = load_split(
        suite.dataset, "test", data_dir=data_dir, download=download, n=n, seed=suite.seed,
        params=_test_params(suite),
    )
    paths = []
    for name in names:
        for start, stop in shards:
            path = _evaluate_shard(
                loaded, suite, name, start, stop, out_dir, data=data, data_dir=data_dir,
                download=download, model_label=model_label, groups=groups, batch_size=batch_size,
            )
            paths.append(path)
            if on_shard is not None:
                on_shard(name, start, stop, path)
    return paths


# ----------------------------------------------------------------------------------------------
# Summary


def read_results(paths: Iterable[str | os.PathLike[str]]) -> Any:
    """Concatenate results files into one DataFrame (schema version checked)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from jobs.schema import check_schema_version

    frames = []
    for p in paths:
        table = pq.read_table(p)
        check_schema_version(table.schema.metadata, path=str(p))
        frames.append(table.to_pandas())
    if not frames:
        return pd.DataFrame({name: [] for name in COLUMNS})
    return pd.concat(frames, ignore_index=True)


def _normalise_groups(groups: Mapping[str, Any] | None, df: Any) -> dict[str, dict[str, list[str]]]:
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


def summarize(paths_or_df: Any, groups: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Accuracies per model at full budget: ``{model_id: {"label", "n", "clean", "families":
    {family: acc}, "attacks": {attack: acc}, "groups": {group: {"families", "union", "average",
    "affine": {family: acc}}}}}``.

    An input is robust to a family when it is clean-correct and no attack of that family fooled
    it; union: robust to every family of the group; average: mean of the group's family
    accuracies. Only inputs evaluated by every attack of the model are counted (``n``).
    """
    import pandas as pd

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
