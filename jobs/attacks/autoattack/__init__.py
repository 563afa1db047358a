"""AutoAttack (APGD-CE, APGD-T, FAB-T, Square, and its standard ensemble): the specs (``spec``,
torch-free) and the wrappers (``attack``)."""

from jobs.attacks.autoattack.spec import (
    AUTOATTACK_ATTACKS,
    AUTOATTACK_VERSIONS,
    AutoAttackSpec,
    AutoAttackStandardSpec,
)
from jobs.lazy import lazy_exports

_ATTACK = ("AUTOATTACK_BATCH", "AUTOATTACK_NORMS", "COMPONENTS", "AutoAttackAttack",
           "AutoAttackStandard", "run_standard")
__all__ = ["AUTOATTACK_ATTACKS", "AUTOATTACK_VERSIONS", "AutoAttackSpec", "AutoAttackStandardSpec",
           *_ATTACK]
__getattr__ = lazy_exports(__name__, dict.fromkeys(_ATTACK, "jobs.attacks.autoattack.attack"))
