"""The paper's affine adversaries (l_inf+RT, l_inf+l_1): the spec (``spec``, torch-free) and the
attacks (``attack``)."""

from jobs.attacks.affine.spec import AffineSpec
from jobs.lazy import lazy_exports

__all__ = ["AffineLinfL1", "AffineLinfRT", "AffineSpec"]
__getattr__ = lazy_exports(__name__, dict.fromkeys(("AffineLinfL1", "AffineLinfRT"),
                                                  "jobs.attacks.affine.attack"))
