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
        kind: first-order            # first-order | gradient-free | grid
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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

import jobs.attacks
from jobs.attacks.base import AttackSpec
from jobs.attacks.library_spec import AutoAttackStandardSpec, LibrarySpec
from jobs.attacks.spec import parse_spec
from jobs.cascade import resolve_cascades
from jobs.data import DataError, dataset_info, toy_params
from jobs.errors import MpoError
from jobs.io import load_yaml
from jobs.validation import FrozenModel, format_validation_error

if TYPE_CHECKING:
    from jobs.attacks.norms import Ball
    from jobs.config import TrainConfig

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@-]*$")
#: ``budgets_protocol``: every attack of a family at every point / the suite says some are not.
FULL_PROTOCOL, REDUCED_PROTOCOL = "full", "reduced"
#: At most this many points per radius range (a typo in the step should not add 10^6 attacks).
MAX_RADII = 200


class SuiteError(MpoError, ValueError):
    """An invalid suite file or an unknown suite/attack name."""


class SuiteMismatchError(MpoError, ValueError):
    """A checkpoint that does not belong to the suite's dataset."""


# ----------------------------------------------------------------------------------------------
# The suite as the evaluation uses it


@dataclass(frozen=True)
class SuiteAttack:
    name: str
    family: str
    kind: str
    spec: dict[str, Any]
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
        return parse_spec(self.spec).ball(self.epsilon)

    def own_labels(self) -> tuple[str, ...]:
        """The ``broken_by`` values of inputs this attack's own run broke: its name, or its
        components for an ensemble (AutoAttack's standard version)."""
        parsed = parse_spec(self.spec)
        return (self.name, *parsed.components) if isinstance(parsed, AutoAttackStandardSpec) else (
            self.name,)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "family": self.family,
            "kind": self.kind,
            "spec": self.spec,
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
        raise SuiteError(
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
            "attacks": [a.to_dict() for a in self.attacks],
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
        raise SuiteMismatchError(
            f"{source} was trained on dataset '{config.dataset.name}' but suite '{suite.name}' "
            f"evaluates '{suite.dataset}'; choose a {config.dataset.name} suite "
            f"(built-in: {', '.join(suite_names())})"
        )
    if suite.dataset == "toy":
        mine, theirs = toy_identity(config.dataset.params), toy_identity(suite.dataset_params)
        if mine != theirs:
            raise SuiteMismatchError(
                f"{source} was trained on toy data {mine} but suite '{suite.name}' "
                f"evaluates toy data {theirs}"
            )


# ----------------------------------------------------------------------------------------------
# The suite file


def _name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError("letters, digits and . _ - + @ only")
    return value


def _flag(value: object) -> bool:
    # YAML's true / false only: pydantic would also read 'yes' or 1 as true
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _cascade_request(value: object) -> bool | list[str] | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, list) and value and all(isinstance(n, str) for n in value):
        return value
    raise ValueError("must be true, false or a non-empty list of earlier attack names")


def _radius_range(value: tuple[float, float, float]) -> tuple[float, float, float]:
    start, stop, step = value
    if not (start >= 0 and step > 0 and stop >= start):
        raise ValueError("must be [start, stop, step] with 0 <= start <= stop and step > 0")
    if len(radius_points(value)) > MAX_RADII:
        raise ValueError(f"gives more than {MAX_RADII} radii; use a larger step")
    return value


def radius_points(value: tuple[float, float, float]) -> list[float]:
    """The radii of an inclusive range [start, stop, step] (float steps that land within 1e-9 of
    ``stop`` include it)."""
    start, stop, step = value
    count = math.floor((stop - start) / step + 1e-9) + 1
    return [round(start + i * step, 12) for i in range(count)]


Name = Annotated[str, AfterValidator(_name)]
Fraction = Annotated[float, Field(gt=0, lt=1, strict=True)]
RadiusRange = Annotated[tuple[float, float, float], AfterValidator(_radius_range)]


class AttackEntry(FrozenModel):
    """One attack of a suite file."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: Name
    kind: Literal["first-order", "gradient-free", "grid"]
    spec: Annotated[AttackSpec, BeforeValidator(parse_spec)]
    family: str | None = Field(None, description="checked against the spec's family")
    epsilon: float | None = Field(None, gt=0, strict=True, description="radius of the in-ball rule")
    budgets: list[Fraction] | None = Field(None, description="fractions of the ball for copies")
    cascade: Annotated[bool | list[str] | None, BeforeValidator(_cascade_request)] = None

    @field_validator("family")
    @classmethod
    def _same_family(cls, family: str | None, info: ValidationInfo) -> str | None:
        spec = info.data.get("spec")
        if family is not None and spec is not None and family != spec.family:
            raise ValueError(f"the spec's family is {spec.family!r}")
        return family

    @field_validator("epsilon")
    @classmethod
    def _has_radius(cls, epsilon: float | None, info: ValidationInfo) -> float | None:
        spec = info.data.get("spec")
        if epsilon is not None and spec is not None:
            spec.ball(epsilon)  # a ValueError for families without a radius
        return epsilon


class GroupEntry(FrozenModel):
    """A report group: the families its union and average are over, and its affine families."""

    families: list[str]
    affine: list[str] | None = None

    @field_validator("families")
    @classmethod
    def _not_empty(cls, families: list[str]) -> list[str]:
        if not families:
            raise ValueError("needs at least one family")
        return families


def _group_shorthand(value: object) -> object:
    return {"families": value} if isinstance(value, list) else value


def _families_present(group: GroupEntry, info: ValidationInfo) -> GroupEntry:
    attacks = info.data.get("attacks")
    if attacks is not None:
        present = {a.spec.family for a in attacks}
        for f in group.families + (group.affine or []):
            if f not in present:
                raise ValueError(f"family {f!r} has no attack in the suite ({sorted(present)})")
    return group


class SuiteFile(FrozenModel):
    """A suite file as written (the module docstring shows every field)."""

    name: Name
    description: str | None = None
    dataset: str
    dataset_params: dict[str, Any] | None = Field(None, description="toy only")
    seed: int = Field(0, ge=0, strict=True)
    n_test: int = Field(1000, ge=1, strict=True)
    cascade: Annotated[bool, BeforeValidator(_flag)] = False
    budgets: list[Fraction] | dict[str, list[Fraction]] | None = Field(
        None, description="fractions of every family's ball (a list) or per family")
    radii: dict[str, RadiusRange] | None = Field(None, description="{family: [start, stop, step]}")
    budgets_protocol: Literal["full", "reduced"] = FULL_PROTOCOL
    attacks: list[AttackEntry]
    groups: dict[str, Annotated[GroupEntry, BeforeValidator(_group_shorthand),
                                AfterValidator(_families_present)]] | None = None

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        try:
            dataset_info(name)
        except DataError as err:
            raise ValueError(str(err)) from None
        return name

    @field_validator("dataset_params")
    @classmethod
    def _known_params(cls, params: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if info.data.get("dataset") is not None:
            try:
                dataset_info(info.data["dataset"], params or None)
            except DataError as err:
                raise ValueError(str(err)) from None
        return params

    @field_validator("attacks")
    @classmethod
    def _unique_names(cls, attacks: list[AttackEntry]) -> list[AttackEntry]:
        if not attacks:
            raise ValueError("must be a non-empty list of attacks")
        names = [a.name for a in attacks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate attack names {dupes}")
        return attacks


# ----------------------------------------------------------------------------------------------
# From the file to the suite


def _validate(data: object, source: str, default_name: str) -> SuiteFile:
    if not isinstance(data, Mapping):
        raise SuiteError(f"{source}: a suite must be a mapping, got {type(data).__name__}")
    try:
        return SuiteFile.model_validate({**data, "name": data.get("name") or default_name})
    except ValidationError as err:
        raise SuiteError(format_validation_error(err, source=source, model=SuiteFile)) from None


#: The error a suite check raises: (field, message) -> SuiteError naming the file.
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
    """Each attack, then its copies at its other points, ascending (built once: a missing
    library fails here). A copy's ``below`` is the same attack at the next smaller point."""
    bounds = dataset_info(file.dataset, file.dataset_params or None).bounds
    out = []
    for entry, budgets in zip(file.attacks, points.per_attack, strict=True):
        below = None
        minimum_norm = isinstance(entry.spec, LibrarySpec) and entry.spec.minimum_norm
        copies = []
        for budget in budgets:
            name = _copy_name(entry.name, budget)
            radius = None if entry.epsilon is None else entry.epsilon * budget
            attack = jobs.attacks.make_attack(entry.spec.scaled(budget).to_dict(), bounds=bounds)
            copies.append(SuiteAttack(name, attack.family, entry.kind, attack.spec, budget, radius,
                                      base=entry.name, below=below,
                                      thresholds=minimum_norm and below is not None))
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
    file = _validate(data, source, default_name)

    def fail(where: str, msg: str) -> SuiteError:
        return SuiteError(f"{source}: field '{where}': {msg}")

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
    path = suite_path(name_or_path, dataset)
    data = load_yaml(path, error=SuiteError, what="suite file")
    return parse_suite(data, source=str(path), default_name=path.stem)

