"""The evaluation suite as its results files record it (``mpo.suite``, results schema 2).

A suite states its attacks (each with its family, kind, spec, budget, radius and ``base``: the
full-budget attack it is a copy of), its ``budgets_protocol`` ("full": every attack of a family
runs at every budget or radius point of the family; "reduced": the suite says some points use
fewer attacks), the radius ranges it asked for (``radii``) and each l_p family's full radius
(``full_radius``). ``SuiteInfo`` is that record, read leniently: what is missing takes the
contract's default and what cannot be read becomes a warning, never an error (the metadata only
describes results the rows already hold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from analysis.legacy_describe import legacy_description

FULL_PROTOCOL = "full"
REDUCED_PROTOCOL = "reduced"


@dataclass(frozen=True)
class RecordedAttack:
    """One attack of the suite as recorded: a full-budget attack (``base == name``) or one of
    its copies. (``jobs.suite.SuiteAttack`` is the live one; it builds attacks, so it needs
    torch, which the analysis does without.)"""

    name: str
    family: str
    kind: str
    spec: dict[str, Any]
    budget: float
    epsilon: float
    base: str
    #: how the attack states itself (``jobs.attacks.specbase.Description``: label, radius,
    #: effort, restarts, kind, components), as its results file recorded it
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def is_full(self) -> bool:
        return self.base == self.name

    @property
    def components(self) -> tuple[str, ...]:
        """An ensemble's components (which the rows name as what broke an input), or ()."""
        return tuple(str(c) for c in self.description.get("components") or ())


@dataclass(frozen=True)
class SuiteInfo:
    name: str
    budgets_protocol: str
    radii: dict[str, tuple[float, ...]]
    full_radius: dict[str, float]
    attacks: tuple[RecordedAttack, ...]

    @property
    def reduced(self) -> bool:
        """Do some budget points use fewer attacks than the full budget (stated by the suite)?"""
        return self.budgets_protocol != FULL_PROTOCOL

    def families(self) -> list[str]:
        """The families of the suite's attacks, in the order the suite lists them."""
        return list(dict.fromkeys(a.family for a in self.attacks))

    def full_attacks(self, family: str) -> list[RecordedAttack]:
        """The attacks that define ``family`` at its full budget, in suite order."""
        return [a for a in self.attacks if a.family == family and a.is_full]

    def points(self, base: str) -> list[float]:
        """The budget fractions the full-budget attack ``base`` runs at (its own 1.0 included)."""
        return sorted({round(a.budget, 9) for a in self.attacks if a.base == base})


def _float(value: object, default: float = math.nan) -> float:
    if not isinstance(value, (int, float, str)):
        return default
    try:
        return float(value)
    except ValueError:
        return default


def _attack(entry: dict[str, Any]) -> RecordedAttack:
    name = str(entry.get("name", ""))
    budget = _float(entry.get("budget"), 1.0)
    # A copy is named "<base>@<budget>" by jobs.suite; the base is stated from schema 2 on.
    base = str(entry.get("base") or (name if budget == 1.0 else name.split("@")[0]))
    spec = entry.get("spec") if isinstance(entry.get("spec"), dict) else {}
    epsilon = _float(entry.get("epsilon"))
    described = entry.get("describe")
    description = described if isinstance(described, dict) else legacy_description(spec, epsilon)
    return RecordedAttack(name=name, family=str(entry.get("family", "")),
                          kind=str(entry.get("kind", "")), spec=spec, budget=budget,
                          epsilon=epsilon, base=base, description=description)


def parse_suite_info(suite: dict[str, Any], warnings: list[str]) -> SuiteInfo:
    """The ``SuiteInfo`` of one ``mpo.suite`` snapshot; what cannot be read is left out with a
    warning in ``warnings``."""
    name = str(suite.get("name", ""))
    protocol = str(suite.get("budgets_protocol") or FULL_PROTOCOL)
    if protocol not in (FULL_PROTOCOL, REDUCED_PROTOCOL):
        warnings.append(f"suite {name}: unknown budgets_protocol {protocol!r}; "
                        "its curves are labelled as not the full protocol")
    radii: dict[str, tuple[float, ...]] = {}
    for family, values in (suite.get("radii") or {}).items():
        if isinstance(values, list) and all(not math.isnan(_float(v)) for v in values):
            radii[str(family)] = tuple(_float(v) for v in values)
        else:
            warnings.append(f"suite {name}: radii of {family} unreadable ({values!r}); ignored")
    full_radius = {str(f): _float(v) for f, v in (suite.get("full_radius") or {}).items()}
    attacks = tuple(_attack(a) for a in suite.get("attacks") or () if isinstance(a, dict))
    return SuiteInfo(name=name, budgets_protocol=protocol, radii=radii,
                     full_radius=full_radius, attacks=attacks)
