"""The exact worst case of an affine classifier on an l_p ball intersected with the input box:
the spec (``spec``, torch-free) and the attack (``attack``)."""

from jobs.attacks.exact.spec import ExactSpec
from jobs.lazy import lazy_exports

__all__ = ["AFFINE_MODULES", "ExactAttack", "ExactSpec", "affine_map", "worst_case"]
__getattr__ = lazy_exports(__name__, dict.fromkeys(
    ("AFFINE_MODULES", "ExactAttack", "affine_map", "worst_case"), "jobs.attacks.exact.attack"))
