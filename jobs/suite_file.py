"""A suite file as written: its YAML validated by pydantic models with mpo's one error formatter.

Errors name the file, the field (``attacks[0].kind``), the value and what is allowed. The fields
are documented in ``jobs.suite``, which turns a validated file into the suite the evaluation
runs. Nothing here imports torch: attack specs are parsed into their (torch-free) spec objects.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from jobs.attacks.checks import AttackSpecError
from jobs.attacks.spec import parse_spec
from jobs.attacks.specbase import AttackSpec
from jobs.datasets import DataError, dataset_info
from jobs.errors import ConfigError
from jobs.validation import FrozenModel, format_validation_error

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@-]*$")
#: ``budgets_protocol``: every attack of a family at every point / the suite says some are not.
FULL_PROTOCOL, REDUCED_PROTOCOL = "full", "reduced"
#: At most this many points per radius range (a typo in the step should not add 10^6 attacks).
MAX_RADII = 200


def _spec(value: object) -> AttackSpec:
    """An attack spec object (pydantic shows a ValueError's message, not our exception type)."""
    try:
        return parse_spec(value)
    except AttackSpecError as err:
        raise ValueError(str(err)) from None


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
#: A budget point: a positive fraction of the family's full ball (1 is the full ball, which every
#: attack runs at anyway; above 1, a radius beyond the stated budget).
Fraction = Annotated[float, Field(gt=0, allow_inf_nan=False)]
RadiusRange = Annotated[tuple[float, float, float], AfterValidator(_radius_range)]


class AttackEntry(FrozenModel):
    """One attack of a suite file."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: Name
    kind: Literal["first-order", "gradient-free", "grid", "exact"]
    spec: Annotated[AttackSpec, BeforeValidator(_spec)]
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


def validate_suite_file(data: object, source: str, default_name: str) -> SuiteFile:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a suite must be a mapping, got {type(data).__name__}")
    try:
        return SuiteFile.model_validate({**data, "name": data.get("name") or default_name})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source=source, model=SuiteFile)) from None
