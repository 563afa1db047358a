"""AutoAttack's attacks (torch-free spec): its components one by one, or its standard ensemble.

    {"type": "autoattack", "attack": "apgd-ce", "norm": "linf", "epsilon": 0.3}
    {"type": "autoattack", "version": "standard", "norm": "linf", "epsilon": 0.3}

- ``attack`` one of ``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``, ``norm`` one of ``linf``,
  ``l2``, ``l1``, and the attack's parameters (``n_iter``, ``n_restarts``, ``n_target_classes``,
  ``n_queries``, ...). The defaults are those of AutoAttack's ``standard`` version for that norm
  (e.g. l_1 APGD with 5 restarts and the large-radius schedule). FAB-T with one restart (the
  default) is a minimum-norm attack: it runs once and its perturbations count at every radius.
- ``version: standard`` (instead of ``attack``), ``norm``, ``epsilon``: AutoAttack's standard
  ensemble as its ``run_standard_evaluation`` runs it: APGD-CE, APGD-T, FAB-T and Square in that
  order, each only on the inputs still robust, with the standard version's settings for the
  norm (``AutoAttack._set_version``: l_1 APGD with 5 restarts, 5 targets and the large-radius
  schedule; l_inf / l_2 one restart and 9 targets; FAB-T 9 targets; Square 5000 queries). No
  other key: the ensemble is AutoAttack's, not a variant of it.

The attacks are in ``jobs.attacks.autoattack.attack``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from jobs.attacks.balls import LP_FAMILIES, LpBall
from jobs.attacks.checks import check_keys, choice, number, spec_error
from jobs.attacks.library.spec import LibraryEntry, LibrarySpec, Param, ParamValue
from jobs.attacks.specbase import AttackSpec, Bounds, Description, num

if TYPE_CHECKING:
    from jobs.attacks.base import Attack

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


def standard_settings(attack: str, norm: str) -> dict[str, ParamValue]:
    """The settings AutoAttack's standard version runs ``attack`` with for ``norm``."""
    params = {k: p.default for k, p in AUTOATTACK_ATTACKS[attack].params.items()}
    return {**params, **_norm_defaults(attack, norm)}


@dataclass(frozen=True)
class AutoAttackSpec(LibrarySpec):
    """One AutoAttack component at one radius and norm (``AutoAttackStandardSpec``: the ensemble)."""

    type: ClassVar[str] = "autoattack"
    TABLE: ClassVar[dict[str, LibraryEntry]] = AUTOATTACK_ATTACKS
    PACKAGE: ClassVar[str] = "pyautoattack"

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, path: str) -> AttackSpec:
        if "version" in spec:
            return AutoAttackStandardSpec.parse(spec, path=path)
        return super().parse(spec, path=path)

    @classmethod
    def _fixed_keys(cls) -> tuple[str, ...]:
        return ("type", "attack", "norm", "epsilon")

    @property
    def minimum_norm(self) -> bool:
        """FAB-T with one restart (the standard version's) starts from the clean input, and its
        search for the smallest perturbation does not use the radius: it runs once as a
        minimum-norm attack (every target, the smallest adversarial perturbation kept;
        ``jobs.attacks.autoattack.attack.fab_min_norm``), counted against every radius."""
        return self.attack == "fab-t" and dict(self.params)["n_restarts"] == 1

    @classmethod
    def _family(cls, spec: Mapping[str, Any], entry: LibraryEntry, path: str) -> str:
        family = spec.get("norm")
        if family not in LP_FAMILIES:
            raise spec_error(path, "norm", f"must be one of {list(LP_FAMILIES)}", family)
        return str(family)

    @classmethod
    def _defaults(cls, attack: str, family: str) -> dict[str, ParamValue]:
        return _norm_defaults(attack, family)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "attack": self.attack, "norm": self.family,
                               "epsilon": self.epsilon}
        out.update(self.params)
        return out

    def describe(self) -> Description:
        return {**super().describe(), "label": f"AutoAttack {self.attack}"}

    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        from jobs.attacks.autoattack.attack import AutoAttackAttack

        return AutoAttackAttack(self, bounds=bounds)


#: The versions of AutoAttack's ensemble a spec may name.
AUTOATTACK_VERSIONS = ("standard",)


@dataclass(frozen=True)
class AutoAttackStandardSpec(AttackSpec):
    """AutoAttack's standard ensemble at one radius and norm
    (``jobs.attacks.autoattack.attack.AutoAttackStandard``)."""

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

    def ball(self, radius: float | None = None) -> LpBall:
        return LpBall(self.family, self.epsilon if radius is None else float(radius))

    def describe(self) -> Description:
        return {**super().describe(),
                "label": f"AutoAttack {self.version} ({', '.join(self.components)})",
                "radius": num(self.epsilon), "effort": "AutoAttack's standard budgets"}

    def required_packages(self) -> tuple[str, ...]:
        return ("pyautoattack",)

    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        from jobs.attacks.autoattack.attack import AutoAttackStandard

        return AutoAttackStandard(self, bounds=bounds)
