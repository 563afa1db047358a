"""Specs of the evaluation attacks from foolbox 3 and AutoAttack (the attacks: ``jobs.attacks.library``).

    {"type": "foolbox", "attack": "boundary_l2", "epsilon": 2.0, "steps": 5000}
    {"type": "autoattack", "attack": "apgd-ce", "norm": "linf", "epsilon": 0.3}
    {"type": "autoattack", "version": "standard", "norm": "linf", "epsilon": 0.3}

Spec keys (every key optional except ``type``, ``attack`` and ``epsilon``; the defaults are the
libraries' own unless noted):

- ``type: foolbox``, ``attack`` one of ``FOOLBOX_ATTACKS`` (its family is in the name:
  ``cw_l2``, ``ead_l1``, ``boundary_l2``, ``pointwise_l1``, ``hsj_linf``, ``hsj_l2``,
  ``fmn_linf``, ``fmn_l2``, ``fmn_l1``); the attack's parameters as in foolbox (see
  ``FOOLBOX_ATTACKS``); ``init_steps`` for the decision-based ones (steps of the noise attack
  that finds their starting points).
- ``type: autoattack``, ``attack`` one of ``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``,
  ``norm`` one of ``linf``, ``l2``, ``l1``, and the attack's parameters (``n_iter``,
  ``n_restarts``, ``n_target_classes``, ``n_queries``, ...). The defaults are those of
  AutoAttack's ``standard`` version for that norm (e.g. l_1 APGD with 5 restarts and the
  large-radius schedule).
- ``type: autoattack``, ``version: standard`` (instead of ``attack``), ``norm``, ``epsilon``:
  AutoAttack's standard ensemble as its ``run_standard_evaluation`` runs it: APGD-CE, APGD-T,
  FAB-T and Square in that order, each only on the inputs still robust, with the standard
  version's settings for the norm (``AutoAttack._set_version``: l_1 APGD with 5 restarts, 5
  targets and the large-radius schedule; l_inf / l_2 one restart and 9 targets; FAB-T 9 targets;
  Square 5000 queries). No other key: the ensemble is AutoAttack's, not a variant of it.

``epsilon`` is the radius of the family's ball. The bounded attacks (AutoAttack's) search inside
it. The minimum-norm ones (C&W, EAD, FMN, Boundary, Pointwise, HopSkipJump) are unbounded: they
return the smallest adversarial perturbation they find and ``AttackResult.norm`` is its true size,
which may exceed ``epsilon``; the evaluation's in-ball rule then counts it as not fooling.
Scaling a library spec (a budget sweep) scales ``epsilon``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from jobs.attacks.base import AttackSpec, Bounds
from jobs.attacks.checks import check_keys, choice, flag, integer, number, spec_error
from jobs.attacks.library import AutoAttackAttack, AutoAttackStandard, FoolboxAttack
from jobs.attacks.norms import LP_FAMILIES, LpBall

if TYPE_CHECKING:
    from jobs.attacks.base import Attack
    from jobs.attacks.norms import Ball

#: A parameter value as a spec dict holds it.
ParamValue = int | float | bool | str | None


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


_INIT = {"init_steps": Param("int", 50, lo=1)}
_FMN = {
    "steps": Param("int", 100, lo=1),
    "max_stepsize": Param("float", 1.0, lo=0.0, lo_open=True),
    "gamma": Param("float", 0.05, lo=0.0, lo_open=True),
    "binary_search_steps": Param("int", 10, lo=1),
}
_HSJ = {
    "steps": Param("int", 64, lo=1),
    "initial_gradient_eval_steps": Param("int", 100, lo=1),
    "max_gradient_eval_steps": Param("int", 10000, lo=1),
    "gamma": Param("float", 1.0, lo=0.0, lo_open=True),
    "stepsize_search": Param("choice", "geometric_progression",
                             choices=("geometric_progression", "grid_search")),
    **_INIT,
}

FOOLBOX_ATTACKS: dict[str, LibraryEntry] = {
    "cw_l2": LibraryEntry("l2", False, False, {
        "binary_search_steps": Param("int", 9, lo=1),
        "steps": Param("int", 10000, lo=1),
        "stepsize": Param("float", 0.01, lo=0.0, lo_open=True),
        "confidence": Param("float", 0.0, lo=0.0),
        "initial_const": Param("float", 0.001, lo=0.0, lo_open=True),
        "abort_early": Param("bool", True),
    }),
    "ead_l1": LibraryEntry("l1", False, False, {
        "binary_search_steps": Param("int", 9, lo=1),
        "steps": Param("int", 10000, lo=1),
        "initial_stepsize": Param("float", 0.01, lo=0.0, lo_open=True),
        "confidence": Param("float", 0.0, lo=0.0),
        "initial_const": Param("float", 0.001, lo=0.0, lo_open=True),
        "regularization": Param("float", 0.01, lo=0.0),
        "decision_rule": Param("choice", "EN", choices=("EN", "L1")),
        "abort_early": Param("bool", True),
    }),
    "boundary_l2": LibraryEntry("l2", True, False, {
        "steps": Param("int", 25000, lo=1),
        "spherical_step": Param("float", 0.01, lo=0.0, lo_open=True),
        "source_step": Param("float", 0.01, lo=0.0, lo_open=True),
        "source_step_convergance": Param("float", 1e-7, lo=0.0),
        "step_adaptation": Param("float", 1.5, lo=1.0, lo_open=True),
        "update_stats_every_k": Param("int", 10, lo=1),
        **_INIT,
    }),
    "pointwise_l1": LibraryEntry("l1", True, False, {
        "l2_binary_search": Param("bool", True),
        "init_steps": Param("int", 1000, lo=1),  # salt-and-pepper noise steps
    }),
    "hsj_linf": LibraryEntry("linf", True, False, dict(_HSJ)),
    "hsj_l2": LibraryEntry("l2", True, False, dict(_HSJ)),
    "fmn_linf": LibraryEntry("linf", False, False, dict(_FMN)),
    "fmn_l2": LibraryEntry("l2", False, False, dict(_FMN)),
    "fmn_l1": LibraryEntry("l1", False, False, dict(_FMN)),
}

#: AutoAttack's attacks; ``None`` defaults depend on the norm (AutoAttack's standard version).
#: Their order is the standard version's (``AutoAttack._set_version``).
AUTOATTACK_ATTACKS: dict[str, LibraryEntry] = {
    "apgd-ce": LibraryEntry("", False, True, {
        "n_iter": Param("int", 100, lo=1),
        "n_restarts": Param("int", None, lo=1),
        "rho": Param("float", 0.75, lo=0.0, lo_open=True),
        "use_largereps": Param("bool", None),
    }),
    "apgd-t": LibraryEntry("", False, True, {
        "n_iter": Param("int", 100, lo=1),
        "n_restarts": Param("int", 1, lo=1),
        "n_target_classes": Param("int", None, lo=1),
        "rho": Param("float", 0.75, lo=0.0, lo_open=True),
        "use_largereps": Param("bool", None),
    }),
    "fab-t": LibraryEntry("", False, True, {
        "n_iter": Param("int", 100, lo=1),
        "n_restarts": Param("int", 1, lo=1),
        "n_target_classes": Param("int", 9, lo=1),
        "alpha_max": Param("float", 0.1, lo=0.0, lo_open=True),
        "eta": Param("float", 1.05, lo=0.0, lo_open=True),
        "beta": Param("float", 0.9, lo=0.0, lo_open=True),
    }),
    "square": LibraryEntry("", True, True, {
        "n_queries": Param("int", 5000, lo=1),
        "p_init": Param("float", 0.8, lo=0.0, lo_open=True),
        "n_restarts": Param("int", 1, lo=1),
    }),
}
def _norm_defaults(attack: str, norm: str) -> dict[str, ParamValue]:
    """AutoAttack's standard-version settings that differ between norms."""
    l1 = norm == "l1"
    return {
        "apgd-ce": {"n_restarts": 5 if l1 else 1, "use_largereps": l1},
        "apgd-t": {"n_target_classes": 5 if l1 else 9, "use_largereps": l1},
    }.get(attack, {})


@dataclass(frozen=True)
class LibrarySpec(AttackSpec):
    """A validated library attack spec (canonical form in ``to_dict``)."""

    type: str
    attack: str
    family: str
    epsilon: float
    params: tuple[tuple[str, ParamValue], ...]

    @property
    def entry(self) -> LibraryEntry:
        table = FOOLBOX_ATTACKS if self.type == "foolbox" else AUTOATTACK_ATTACKS
        return table[self.attack]

    @property
    def minimum_norm(self) -> bool:
        """An unbounded minimum-norm attack (foolbox's): its search does not depend on
        ``epsilon``, which only the in-ball rule uses."""
        return not self.entry.bounded

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, path: str) -> LibrarySpec | AutoAttackStandardSpec:
        typ = spec["type"]
        if typ == "autoattack" and "version" in spec:
            return AutoAttackStandardSpec.parse(spec, path=path)
        table = FOOLBOX_ATTACKS if typ == "foolbox" else AUTOATTACK_ATTACKS
        name = spec.get("attack")
        if name not in table:
            raise spec_error(path, "attack", f"must be one of {sorted(table)} for type {typ!r}", name)
        entry = table[name]
        fixed = ("type", "attack", "epsilon") + (("norm",) if typ == "autoattack" else ())
        check_keys(spec, path, (*fixed, *entry.params), f"{typ} attack {name!r}")
        if typ == "autoattack":
            family = spec.get("norm")
            if family not in LP_FAMILIES:
                raise spec_error(path, "norm", f"must be one of {list(LP_FAMILIES)}", family)
        else:
            family = entry.family
        eps = number(spec, "epsilon", path, lo=0.0, lo_open=True)
        defaults = _norm_defaults(name, family) if typ == "autoattack" else {}
        params = []
        for key, p in entry.params.items():
            if p.default is None:
                p = dataclasses.replace(p, default=defaults[key])
            params.append((key, _param(spec, key, p, path)))
        return cls(type=typ, attack=name, family=family, epsilon=eps, params=tuple(params))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "attack": self.attack}
        if self.type == "autoattack":
            out["norm"] = self.family
        out["epsilon"] = self.epsilon
        out.update(self.params)
        return out

    def _scaled(self, factor: float) -> LibrarySpec:
        return dataclasses.replace(self, epsilon=self.epsilon * factor)

    def ball(self, radius: float | None = None) -> Ball:
        return LpBall(self.family, self.epsilon if radius is None else float(radius))

    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        """The wrapper (imports the library: a clear error if it is missing)."""
        cls = FoolboxAttack if self.type == "foolbox" else AutoAttackAttack
        return cls(self, bounds=bounds)


#: The versions of AutoAttack's ensemble a spec may name.
AUTOATTACK_VERSIONS = ("standard",)


@dataclass(frozen=True)
class AutoAttackStandardSpec(AttackSpec):
    """AutoAttack's standard ensemble at one radius and norm (``jobs.attacks.library.AutoAttackStandard``)."""

    family: str
    epsilon: float

    type: str = "autoattack"
    version: str = "standard"
    #: the components, in the order the ensemble runs them (each on the inputs still robust)
    components: ClassVar[tuple[str, ...]] = tuple(AUTOATTACK_ATTACKS)

    @property
    def attack(self) -> str:
        return f"{self.version} ensemble"

    @property
    def entry(self) -> LibraryEntry:
        # first-order attacks and Square: the kind is the suite's to state
        return LibraryEntry(self.family, gradient_free=False, bounded=True, params={})

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, path: str) -> AutoAttackStandardSpec:
        check_keys(spec, path, ("type", "version", "norm", "epsilon"), "autoattack with 'version'")
        choice(spec, "version", path, choices=AUTOATTACK_VERSIONS, default="standard")
        family = spec.get("norm")
        if family not in LP_FAMILIES:
            raise spec_error(path, "norm", f"must be one of {list(LP_FAMILIES)}", family)
        return cls(family=family, epsilon=number(spec, "epsilon", path, lo=0.0, lo_open=True))

    def component_settings(self) -> dict[str, dict[str, ParamValue]]:
        """Each component's settings in the standard version for this norm (as ``AutoAttack``
        sets them; for the cost count and the protocol)."""
        return {name: {**{k: p.default for k, p in entry.params.items() if p.default is not None},
                       **_norm_defaults(name, self.family)}
                for name, entry in AUTOATTACK_ATTACKS.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "version": self.version, "norm": self.family,
                "epsilon": self.epsilon}

    def _scaled(self, factor: float) -> AutoAttackStandardSpec:
        return dataclasses.replace(self, epsilon=self.epsilon * factor)

    def ball(self, radius: float | None = None) -> Ball:
        return LpBall(self.family, self.epsilon if radius is None else float(radius))

    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        return AutoAttackStandard(self, bounds=bounds)


def _param(spec: Mapping[str, Any], key: str, p: Param, path: str) -> ParamValue:
    if p.kind == "int":
        return integer(spec, key, path, default=p.default, lo=int(p.lo) if p.lo is not None else None)
    if p.kind == "float":
        return number(spec, key, path, default=p.default, lo=p.lo, lo_open=p.lo_open)
    if p.kind == "bool":
        return flag(spec, key, path, default=p.default)
    return choice(spec, key, path, choices=p.choices, default=p.default)
