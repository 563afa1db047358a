"""What the library attacks share: the parameter tables and spec base (``spec``, torch-free) and
the wrappers' base class (``attack``). The attacks themselves are ``jobs.attacks.foolbox`` and
``jobs.attacks.autoattack``."""

from jobs.attacks.library.spec import LibraryEntry, LibrarySpec, Param
from jobs.lazy import lazy_exports

_ATTACK = ("LibraryAttack", "MpoError", "UnitScaled", "draw_seed", "require", "seeded")
__all__ = ["LibraryEntry", "LibrarySpec", "Param", *_ATTACK]
__getattr__ = lazy_exports(__name__, dict.fromkeys(_ATTACK, "jobs.attacks.library.attack"))
