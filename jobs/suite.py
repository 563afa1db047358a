"""Evaluation suites: the attacks a checkpoint is evaluated against, validated from YAML.

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
    budgets: [0.25, 0.5, 0.75]       # optional: every attack of every family also runs at these
                                     # fractions of its ball; or per family: {linf: [...], rt: [...]}
    radii: {linf: [0, 0.4, 0.025]}   # optional: robustness curves, per family [start, stop, step]
                                     # (inclusive): l_p radii, or fractions of the budget (rt, affine)
    budgets_protocol: full           # full (default) | reduced: see below
    attacks:
      - name: linf-pgd               # unique; letters, digits and . _ - + @ only
        kind: first-order            # first-order | gradient-free | grid | exact (affine models)
        spec: {type: linf, epsilon: 0.3, k: 40, reps: 2}   # as jobs.attacks.make_attack takes it
        family: linf                 # optional: checked against the attack's own family
        epsilon: 0.3                 # optional: radius of the in-ball rule (default: the attack's)
        budgets: [0.5]               # optional: more points for this attack only (reduced protocol)

Budget points. Every attack of the suite is evaluated at ``budget`` 1.0 (its full ball). The
suite-level ``budgets``, the ``radii`` (radius / the family's full radius; may exceed 1; radius 0 is
the clean accuracy and needs no attack) and an attack's own ``budgets`` add copies of the attack
named ``name@b`` on its ball scaled by b (``AttackSpec.scaled``: radius, step sizes, RT limits,
AutoAttack's epsilon). The protocol is one per family: under ``budgets_protocol: full`` every attack
of a family runs at every point of the family, and a suite whose points use different attack
sets within a family is refused; ``reduced`` allows it, and the results' metadata says so.

Cascades (``jobs.cascade``). The same attack at increasing radii is a cascade: a copy runs only
on the inputs still robust to the copy at the next smaller radius (nested balls: the smaller
copy's perturbation lies in the larger ball and counts there). A suite-level ``cascade: true``
or a per-attack ``cascade: true | [names]`` also runs an attack only on the inputs still robust
after the earlier attacks of the same family ball (and, for ``true``, the same kind); an attack's
``cascade: false`` attacks every input at every radius. Skipped inputs keep complete rows that
name what broke them (``broken_by``). A minimum-norm attack (foolbox's, unbounded: its search
does not depend on the radius) runs once, at its smallest radius; its copies at larger radii
count the same perturbations against their own radius.

The file is validated by pydantic models (``SuiteFile``) with mpo's one error formatter: errors
name the file, the field (``attacks[0].kind``), the value and what is allowed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.attacks.library.spec import package_present
from jobs.attacks.specbase import AttackSpec
from jobs.cascade import resolve_cascades
from jobs.datasets import toy_params
from jobs.errors import ConfigError
from jobs.io import load_yaml
from jobs.suite_file import (
    FULL_PROTOCOL,
    REDUCED_PROTOCOL,
    SuiteFile,
    radius_points,
    validate_suite_file,
)

if TYPE_CHECKING:
    from jobs.attacks.balls import Ball
    from jobs.config import TrainConfig

__all__ = [
    "FULL_PROTOCOL",
    "REDUCED_PROTOCOL",
    "EvalSuite",
    "SuiteAttack",
    "check_compatible",
    "load_suite",
    "parse_suite",
    "radius_points",
    "suite_names",
    "suite_path",
    "toy_identity",
]


# ----------------------------------------------------------------------------------------------
# The suite as the evaluation uses it


@dataclass(frozen=True)
class SuiteAttack:
    """One attack of a suite at one budget point: its spec object (turned into a dict only where
    it is written), its ball's radius and its place in the cascades."""

    name: str
    family: str
    kind: str
    spec: AttackSpec
    budget: float = 1.0
    epsilon: float | None = None
    after: tuple[str, ...] = ()  # cascade: attacked only where these left the input robust
    base: str = ""  # the full-budget attack this is a copy of ("": itself)
    below: str | None = None  # the same attack at the next smaller radius (first of ``after``)
    thresholds: bool = False  # a minimum-norm copy: counts ``below``'s perturbations, no run

    def __post_init__(self) -> None:
        if not self.base:
            object.__setattr__(self, "base", self.name)

    def ball(self) -> Ball:
        """The ball of the in-ball rule (``epsilon``, when set, is its l_p radius)."""
        return self.spec.ball(self.epsilon)

    def own_labels(self) -> tuple[str, ...]:
        """The ``broken_by`` values of inputs this attack's own run broke: its name, and an
        ensemble's components (AutoAttack's standard version)."""
        return (self.name, *self.spec.components)

    def to_dict(self) -> dict[str, Any]:
        """The attack as its shard's content key holds it."""
        out = {
            "name": self.name,
            "family": self.family,
            "kind": self.kind,
            "spec": self.spec.to_dict(),
            "budget": self.budget,
            "epsilon": self.epsilon,
            "base": self.base,
        }
        if self.after:
            out["after"] = list(self.after)
        if self.below is not None:
            out["below"] = self.below
        if self.thresholds:
            out["thresholds"] = True
        return out

    def record(self) -> dict[str, Any]:
        """The attack as the results' suite metadata records it: ``to_dict`` and how a report
        states it (``describe``), so the torch-free analysis never re-learns an attack type."""
        return {**self.to_dict(), "describe": dict(self.spec.describe())}


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
    budgets_protocol: str = FULL_PROTOCOL
    radii: dict[str, list[float]] = field(default_factory=dict)  # {family: radii asked for}
    full_radius: dict[str, float] = field(default_factory=dict)  # {l_p family: its epsilon}

    def attack(self, name: str) -> SuiteAttack:
        for a in self.attacks:
            if a.name == name:
                return a
        raise ConfigError(
            f"suite '{self.name}' has no attack '{name}'; its attacks: "
            + ", ".join(a.name for a in self.attacks)
        )

    def test_params(self) -> dict[str, Any] | None:
        """The test split's dataset parameters: the suite's own (toy), so that every model of a
        suite sees the same test points whatever its training split sizes were."""
        return dict(self.dataset_params) if self.dataset == "toy" else None

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
            "attacks": [a.record() for a in self.attacks],
            "budgets_protocol": self.budgets_protocol,
            "radii": {f: list(r) for f, r in self.radii.items()},
            "full_radius": dict(self.full_radius),
        }


def toy_identity(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The toy parameters that define its distribution (not the split sizes)."""
    p = toy_params(dict(params or {}))
    return {"d": p.d, "alpha": p.alpha, "p0": p.p0, "x0": p.x0}


def check_compatible(config: TrainConfig, suite: EvalSuite, *, source: str = "checkpoint") -> None:
    """Refuse a checkpoint whose dataset (or toy distribution) differs from the suite's."""
    if config.dataset.name != suite.dataset:
        raise ConfigError(
            f"{source} was trained on dataset '{config.dataset.name}' but suite '{suite.name}' "
            f"evaluates '{suite.dataset}'; choose a {config.dataset.name} suite "
            f"(built-in: {', '.join(suite_names())})"
        )
    if suite.dataset == "toy":
        mine, theirs = toy_identity(config.dataset.params), toy_identity(suite.dataset_params)
        if mine != theirs:
            raise ConfigError(
                f"{source} was trained on toy data {mine} but suite '{suite.name}' "
                f"evaluates toy data {theirs}"
            )


# ----------------------------------------------------------------------------------------------
# From the file to the suite


#: The error a suite check raises: (field, message) -> ConfigError naming the file.
Fail = Callable[[str, str], Exception]


@dataclass(frozen=True)
class _Points:
    """Each file attack's budget points (ascending, 1.0 included), and what the suite records."""

    per_attack: list[list[float]]
    radii: dict[str, list[float]]
    full_radius: dict[str, float]


def _full_radius(file: SuiteFile) -> dict[str, list[tuple[int, float]]]:
    """{l_p family: [(file position, radius of the in-ball rule at budget 1.0)]}."""
    out: dict[str, list[tuple[int, float]]] = {}
    for i, entry in enumerate(file.attacks):
        eps = entry.spec.ball(entry.epsilon).epsilon
        if math.isfinite(eps):
            out.setdefault(entry.spec.family, []).append((i, eps))
    return out


def _family_budgets(file: SuiteFile, fail: Fail) -> dict[str, list[float]]:
    """{family: the suite-level budget fractions} (a list applies to every family)."""
    families = list(dict.fromkeys(e.spec.family for e in file.attacks))
    if file.budgets is None:
        return {}
    if isinstance(file.budgets, list):
        return {f: list(file.budgets) for f in families}
    for family in file.budgets:
        if family not in families:
            raise fail(f"budgets.{family}", f"the suite has no attack of family {family!r} "
                       f"(its families: {', '.join(families)})")
    return {f: list(v) for f, v in file.budgets.items()}


def _radius_budgets(file: SuiteFile, fail: Fail) -> tuple[dict[str, list[float]], dict[str, list[float]],
                                                             dict[str, float]]:
    """({family: budget fractions of its radii}, {family: the radii}, {l_p family: full radius})."""
    full = _full_radius(file)
    full_radius = {f: v[0][1] for f, v in full.items()}
    families = list(dict.fromkeys(e.spec.family for e in file.attacks))
    budgets, radii = {}, {}
    for family, value in (file.radii or {}).items():
        where = f"radii.{family}"
        if family not in families:
            raise fail(where, f"the suite has no attack of family {family!r} "
                       f"(its families: {', '.join(families)})")
        points = radius_points(value)
        if family in full:
            distinct = sorted({eps for _, eps in full[family]})
            if len(distinct) > 1:
                raise fail(where, f"the {family} attacks have different radii {distinct} at the "
                           "full budget; a radius range needs one full radius per family")
            scale = full_radius[family]
        else:
            scale = 1.0  # rt and affine families: the points are fractions of the budget
        budgets[family] = [r / scale for r in points if r > 0]
        radii[family] = points
    return budgets, radii, full_radius


def _points(file: SuiteFile, fail: Fail) -> _Points:
    """Every file attack's budget points, with the protocol check: under the full protocol every
    attack of a family has the same points."""
    suite_level = _family_budgets(file, fail)
    from_radii, radii, full_radius = _radius_budgets(file, fail)
    per_attack = []
    for entry in file.attacks:
        family = entry.spec.family
        pts = {round(b, 12) for b in (suite_level.get(family, []) + from_radii.get(family, [])
                                      + (entry.budgets or []))}
        per_attack.append(sorted(pts | {1.0}))
    if file.budgets_protocol == FULL_PROTOCOL:
        for family in dict.fromkeys(e.spec.family for e in file.attacks):
            mine = [i for i, e in enumerate(file.attacks) if e.spec.family == family]
            first = mine[0]
            for i in mine[1:]:
                if per_attack[i] != per_attack[first]:
                    a, b = file.attacks[first], file.attacks[i]
                    raise fail(
                        f"attacks[{i}].budgets",
                        f"family {family!r}: attack {a.name!r} runs at budgets "
                        f"{_fmt(per_attack[first])} but {b.name!r} at {_fmt(per_attack[i])}; "
                        "with budgets_protocol: full (the default) every attack of a family runs "
                        f"at every budget point of the family: give the points at suite level "
                        f"(budgets: {{{family}: [...]}}), or say budgets_protocol: reduced",
                    )
    return _Points(per_attack, radii, full_radius)


def _fmt(points: list[float]) -> str:
    return "[" + ", ".join(f"{p:g}" for p in points) + "]"


def _copy_name(name: str, budget: float) -> str:
    return name if budget == 1.0 else f"{name}@{budget:g}"


def _suite_attacks(file: SuiteFile, points: _Points, fail: Fail) -> list[SuiteAttack]:
    """Each attack, then its copies at its other points, ascending. A copy's ``below`` is the
    same attack at the next smaller point. A library that cannot be found fails here, before any
    work (found, not imported: suites load without torch)."""
    out = []
    for i, (entry, budgets) in enumerate(zip(file.attacks, points.per_attack, strict=True)):
        for package in entry.spec.required_packages():
            if not package_present(package):
                raise fail(f"attacks[{i}].spec", f"attack {entry.name!r} needs the package "
                           f"'{package}', which is not installed; it is one of mpo's "
                           f"dependencies: reinstall mpo (`pip install -e .`) or `pip install {package}`")
        below = None
        copies = []
        for budget in budgets:
            name = _copy_name(entry.name, budget)
            radius = None if entry.epsilon is None else entry.epsilon * budget
            spec = entry.spec.scaled(budget)
            copies.append(SuiteAttack(name, spec.family, entry.kind, spec, budget, radius,
                                      base=entry.name, below=below,
                                      thresholds=entry.spec.minimum_norm and below is not None))
            below = name
        out += sorted(copies, key=lambda a: a.budget != 1.0)  # the full-budget attack first
    names = [a.name for a in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise fail("attacks", f"duplicate attack names {dupes} (budget copies are named "
                   "<name>@<budget>)")
    return out


def _groups(file: SuiteFile, attacks: list[SuiteAttack]) -> dict[str, dict[str, list[str]]]:
    """The file's groups, or one group named after the suite with every family."""
    if file.groups:
        return {g: {"families": list(v.families), "affine": list(v.affine or [])}
                for g, v in file.groups.items()}
    families = list(dict.fromkeys(a.family for a in attacks))
    return {file.name: {"families": [f for f in families if "+" not in f],
                        "affine": [f for f in families if "+" in f]}}


def parse_suite(data: object, *, source: str = "suite", default_name: str = "") -> EvalSuite:
    """Validate a suite mapping (the YAML content) into an ``EvalSuite``."""
    file = validate_suite_file(data, source, default_name)

    def fail(where: str, msg: str) -> ConfigError:
        return ConfigError(f"{source}: field '{where}': {msg}")

    points = _points(file, fail)
    attacks = resolve_cascades(
        _suite_attacks(file, points, fail),
        {e.name: (f"attacks[{i}].cascade", e.cascade) for i, e in enumerate(file.attacks)},
        default=file.cascade, fail=fail,
    )
    return EvalSuite(
        name=file.name,
        dataset=file.dataset,
        attacks=attacks,
        groups=_groups(file, attacks),
        seed=file.seed,
        n_test=file.n_test,
        dataset_params=dict(file.dataset_params or {}),
        description=file.description or "",
        budgets_protocol=file.budgets_protocol,
        radii=points.radii,
        full_radius=points.full_radius,
    )


# ----------------------------------------------------------------------------------------------
# Suite files by name


def suite_names() -> list[str]:
    folder = resources.files("jobs") / "suites"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def suite_path(name_or_path: str | os.PathLike[str], dataset: str | None = None) -> Path:
    """A suite file path, or the file of a built-in suite (``strong`` with ``dataset`` mnist:
    ``mnist-strong``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"suite file {path} does not exist")
        return path
    builtin = Path(str(resources.files("jobs") / "suites" / f"{name_or_path}.yaml"))
    per_dataset = [n for n in suite_names() if n.endswith(f"-{name_or_path}")]
    if not builtin.exists() and dataset is not None and f"{dataset}-{name_or_path}" in per_dataset:
        builtin = builtin.with_name(f"{dataset}-{name_or_path}.yaml")
    if not builtin.exists() and per_dataset:
        raise ConfigError(
            f"suite '{name_or_path}' exists per dataset: {', '.join(per_dataset)}; name one of "
            "them (or evaluate a checkpoint of one of these datasets)"
        )
    if not builtin.exists():
        raise ConfigError(
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
    path = suite_path(name_or_path, dataset)
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError:
        key = None
    if key is not None and key in _PARSED:
        return _PARSED[key]
    data = load_yaml(path, error=ConfigError, what="suite file")
    suite = parse_suite(data, source=str(path), default_name=path.stem)
    if key is not None:
        _PARSED[key] = suite
    return suite


#: Suites parsed in this process, by (file, modification time, size): a grid listing parses the
#: same shipped suite for several grids. ``EvalSuite`` is frozen; callers copy it to change it.
_PARSED: dict[tuple[str, int, int], EvalSuite] = {}

