"""Rotation-translation (RT): the spec (``spec``, torch-free) and the batched transform with the
grid / random-search attack (``attack``)."""

from jobs.attacks.spatial.spec import RTSpec
from jobs.lazy import lazy_exports

_ATTACK = ("DEFAULT_EVAL_BATCH", "EVAL_BATCH_BY_DEVICE", "RTAttack", "pad_for", "random_transforms",
           "resolve_eval_batch", "rt_fraction", "rt_grid", "rt_transform", "rt_transform_all",
           "score_transforms", "worst_transform")
__all__ = ["RTSpec", *_ATTACK]
__getattr__ = lazy_exports(__name__, dict.fromkeys(_ATTACK, "jobs.attacks.spatial.attack"))
