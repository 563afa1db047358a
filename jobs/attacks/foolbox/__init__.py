"""foolbox 3's minimum-norm attacks (C&W, EAD, FMN, Boundary, Pointwise, HopSkipJump): the spec
(``spec``, torch-free) and the wrapper (``attack``)."""

from jobs.attacks.foolbox.spec import FOOLBOX_ATTACKS, FoolboxSpec
from jobs.lazy import lazy_exports

__all__ = ["FOOLBOX_ATTACKS", "FoolboxAttack", "FoolboxSpec"]
__getattr__ = lazy_exports(__name__, {"FoolboxAttack": "jobs.attacks.foolbox.attack"})
