"""MSD, multi steepest descent over a union of l_p balls: the spec (``spec``, torch-free) and the
loop with its attack (``attack``)."""

from jobs.attacks.msd.spec import LOOP_KEYS, MsdSpec
from jobs.lazy import lazy_exports

__all__ = ["LOOP_KEYS", "MsdAttack", "MsdSpec", "msd", "msd_run"]
__getattr__ = lazy_exports(__name__, dict.fromkeys(("MsdAttack", "msd", "msd_run"),
                                                  "jobs.attacks.msd.attack"))
