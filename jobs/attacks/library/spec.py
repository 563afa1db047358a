"""What the library attacks' specs share (torch-free): parameter tables and the spec base.

An attack from foolbox 3 (``jobs.attacks.foolbox``) or AutoAttack (``jobs.attacks.autoattack``)
is named by ``attack`` and takes that library's parameters, each declared once in its package's
table (a ``LibraryEntry`` of ``Param``): kind, default, lower bound, choices. ``LibrarySpec``
validates a spec against its table and is what both packages' spec classes are. ``epsilon`` is
the radius of the family's ball: bounded attacks search inside it; the minimum-norm ones
(``bounded=False``: C&W, EAD, FMN, Boundary, Pointwise, HopSkipJump) return the smallest
adversarial perturbation they find, whose true size the evaluation's in-ball rule checks.
Scaling a library spec (a budget point) scales ``epsilon``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from jobs.attacks.balls import LpBall
from jobs.attacks.checks import check_keys, choice, flag, integer, number, spec_error
from jobs.attacks.specbase import AttackSpec, Description, num

#: A parameter value as a spec dict holds it.
ParamValue = int | float | bool | str | None
#: How a report names a parameter that counts work per input: (key, unit), in this order.
EFFORT_KEYS = (("k", "steps"), ("steps", "steps"), ("n_iter", "iterations"), ("n_queries", "queries"))


@dataclass(frozen=True)
class Param:
    """One attack parameter: kind int | float | bool | choice, default, lower bound, choices."""

    kind: str
    default: ParamValue
    lo: float | None = None
    lo_open: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class LibraryEntry:
    family: str
    gradient_free: bool
    bounded: bool
    params: dict[str, Param]


def param_value(spec: Mapping[str, Any], key: str, p: Param, path: str) -> ParamValue:
    """The value of parameter ``key`` (its default when absent), validated as ``p`` says."""
    if p.kind == "int":
        return integer(spec, key, path, default=p.default, lo=int(p.lo) if p.lo is not None else None)
    if p.kind == "float":
        return number(spec, key, path, default=p.default, lo=p.lo, lo_open=p.lo_open)
    if p.kind == "bool":
        return flag(spec, key, path, default=p.default)
    return choice(spec, key, path, choices=p.choices, default=p.default)


def effort(params: Mapping[str, Any]) -> str:
    """Steps, iterations or queries per input, as the parameters state them."""
    out = [f"{params[key]} {unit}" for key, unit in EFFORT_KEYS if isinstance(params.get(key), int)
           and not isinstance(params.get(key), bool)]
    if isinstance(params.get("binary_search_steps"), int) and out:
        out[0] = f"{params['binary_search_steps']} × {out[0]}"
    if isinstance(params.get("n_target_classes"), int):
        out.append(f"{params['n_target_classes']} target classes")
    if isinstance(params.get("init_steps"), int):
        out.append(f"{params['init_steps']} start steps")
    return ", ".join(out) or "—"


@dataclass(frozen=True)
class LibrarySpec(AttackSpec):
    """A validated library attack spec (canonical form in ``to_dict``); a subclass names its
    ``type``, its parameter ``TABLE``, its ``PACKAGE`` and how it builds."""

    attack: str
    family: str
    epsilon: float
    params: tuple[tuple[str, ParamValue], ...]

    TABLE: ClassVar[dict[str, LibraryEntry]] = {}
    #: the import name of the library
    PACKAGE: ClassVar[str] = ""

    @property
    def entry(self) -> LibraryEntry:
        return self.TABLE[self.attack]

    @property
    def minimum_norm(self) -> bool:
        """An unbounded minimum-norm attack: its search does not depend on ``epsilon``, which
        only the in-ball rule uses."""
        return not self.entry.bounded

    @classmethod
    def _fixed_keys(cls) -> tuple[str, ...]:
        return ("type", "attack", "epsilon")

    @classmethod
    def _family(cls, spec: Mapping[str, Any], entry: LibraryEntry, path: str) -> str:
        return entry.family

    @classmethod
    def _defaults(cls, attack: str, family: str) -> dict[str, ParamValue]:
        """Defaults that depend on the family (the table's ``None`` defaults)."""
        return {}

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, path: str) -> AttackSpec:
        name = spec.get("attack")
        if name not in cls.TABLE:
            raise spec_error(path, "attack", f"must be one of {sorted(cls.TABLE)} for type "
                             f"{spec['type']!r}", name)
        entry = cls.TABLE[name]
        check_keys(spec, path, (*cls._fixed_keys(), *entry.params), f"{spec['type']} attack {name!r}")
        family = cls._family(spec, entry, path)
        eps = number(spec, "epsilon", path, lo=0.0, lo_open=True)
        defaults = cls._defaults(name, family)
        params = []
        for key, p in entry.params.items():
            if p.default is None:
                p = dataclasses.replace(p, default=defaults[key])
            params.append((key, param_value(spec, key, p, path)))
        return cls(attack=name, family=family, epsilon=eps, params=tuple(params))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "attack": self.attack, "epsilon": self.epsilon}
        out.update(self.params)
        return out

    def _scaled(self, factor: float) -> LibrarySpec:
        return dataclasses.replace(self, epsilon=self.epsilon * factor)

    def ball(self, radius: float | None = None) -> LpBall:
        return LpBall(self.family, self.epsilon if radius is None else float(radius))

    def describe(self) -> Description:
        p = dict(self.params)
        restarts = next((str(p[k]) for k in ("reps", "n_restarts") if isinstance(p.get(k), int)), "1")
        return {**super().describe(), "radius": num(self.epsilon), "effort": effort(p),
                "restarts": restarts}

    def required_packages(self) -> tuple[str, ...]:
        return (self.PACKAGE,)


def package_present(package: str) -> bool:
    """Is ``package`` installed (found on the import path, without importing it)?"""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a finder that refuses it, a broken module entry
        return False
