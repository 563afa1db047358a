"""The attack spec registry: a spec dict's ``type`` -> the spec class that parses it (torch-free).

A spec is a plain dict using the keys of the public MultiRobustness config files, so configs
port directly. ``parse_spec`` looks its ``type`` up in ``SPEC_TYPES`` and lets that class check
it (every error names the key, the value and what is allowed; unknown keys are rejected to catch
typos) and fill in defaults. The spec classes live beside their attacks, one package per attack
type; each package's ``spec`` module documents its keys:

- linf, l2, l1 (PGD, SLIDE): ``jobs.attacks.pgd.spec``
- rt: ``jobs.attacks.spatial.spec``
- affine: ``jobs.attacks.affine.spec``
- msd: ``jobs.attacks.msd.spec``
- foolbox: ``jobs.attacks.foolbox.spec``; autoattack: ``jobs.attacks.autoattack.spec``
- exact (affine models): ``jobs.attacks.exact.spec``

Adding an attack type: a package with its spec class (an ``AttackSpec``) and the attack class its
``build`` returns (an ``Attack``), one entry here, and its tests (ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from jobs.attacks.affine.spec import AffineSpec
from jobs.attacks.autoattack.spec import AutoAttackSpec
from jobs.attacks.balls import LP_FAMILIES
from jobs.attacks.checks import AttackSpecError, spec_error
from jobs.attacks.exact.spec import ExactSpec
from jobs.attacks.foolbox.spec import FoolboxSpec
from jobs.attacks.msd.spec import MsdSpec
from jobs.attacks.pgd.spec import LpSpec
from jobs.attacks.spatial.spec import RTSpec
from jobs.attacks.specbase import AttackSpec

__all__ = ["SPEC_TYPES", "AttackSpec", "AttackSpecError", "parse_spec"]

#: Every attack type: its ``type`` name -> the spec class that parses, scales and builds it.
SPEC_TYPES: dict[str, type[AttackSpec]] = {
    **dict.fromkeys(LP_FAMILIES, LpSpec),
    "rt": RTSpec,
    "affine": AffineSpec,
    "msd": MsdSpec,
    "foolbox": FoolboxSpec,
    "autoattack": AutoAttackSpec,
    "exact": ExactSpec,
}


def parse_spec(spec: object, *, path: str = "") -> AttackSpec:
    """Validate a spec dict (any value read from a file) and return the immutable,
    defaults-filled spec object; a parsed spec is returned as it is."""
    if isinstance(spec, AttackSpec):
        return spec
    if not isinstance(spec, Mapping):
        raise AttackSpecError(f"attack spec {path or ''}must be a dict, got {type(spec).__name__}")
    typ = spec.get("type")
    if typ not in SPEC_TYPES:
        raise spec_error(path, "type", f"must be one of {list(SPEC_TYPES)}", typ)
    return SPEC_TYPES[typ].parse(spec, path=path)
