"""PGD on the l_inf and l_2 balls and SLIDE on the l_1 ball: the spec (``spec``, torch-free) and
the generic batched PGD loop with its attack (``attack``)."""

from jobs.attacks.pgd.spec import LpSpec
from jobs.lazy import lazy_exports

__all__ = ["LpSpec", "PGDAttack", "pgd", "pgd_run"]
__getattr__ = lazy_exports(__name__, dict.fromkeys(("PGDAttack", "pgd", "pgd_run", "apply_delta"),
                                                  "jobs.attacks.pgd.attack"))
