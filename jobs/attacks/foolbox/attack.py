"""foolbox 3's minimum-norm attacks behind our Attack interface (the spec:
``jobs.attacks.foolbox.spec``). Where an attack finds no adversarial input, the clean input is
returned (norm 0); the evaluation's in-ball rule decides whether a perturbation counts."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from jobs.attacks.library.attack import LibraryAttack, require

if TYPE_CHECKING:
    from types import ModuleType

    from foolbox.attacks.base import MinimizationAttack


class FoolboxAttack(LibraryAttack):
    """A foolbox 3 minimum-norm attack (gradient-based or decision-based), run via ``run``."""

    package = "foolbox"

    def _cost(self) -> int:
        p = dict(self.parsed.params)
        name = self.parsed.attack
        if name in ("cw_l2", "ead_l1"):
            return p["binary_search_steps"] * p["steps"]
        if name.startswith("fmn"):
            return p["steps"]
        if name.startswith("hsj"):
            # foolbox's schedule: step t (1-based) estimates the gradient from
            # min(initial * sqrt(t), max) queries; plus a binary search per step (~log2 of the
            # dimension's square for l_inf, not counted here).
            return p["init_steps"] + sum(
                int(min(p["initial_gradient_eval_steps"] * math.sqrt(t), p["max_gradient_eval_steps"]))
                for t in range(1, p["steps"] + 1)
            )
        if name == "boundary_l2":
            # one query per step, plus the spherical candidates every update_stats_every_k steps
            return p["init_steps"] + p["steps"] + -(-p["steps"] // p["update_stats_every_k"])
        return p["init_steps"]  # pointwise: plus a data-dependent number of forward passes

    def _build(self, fa: ModuleType) -> tuple[MinimizationAttack, MinimizationAttack | None]:
        """(the foolbox attack, the starting-point attack for decision-based ones or None)."""
        p = dict(self.parsed.params)
        name = self.parsed.attack
        if name == "cw_l2":
            return fa.L2CarliniWagnerAttack(**p), None
        if name == "ead_l1":
            return fa.EADAttack(**p), None
        if name.startswith("fmn"):
            cls = {"fmn_linf": fa.LInfFMNAttack, "fmn_l2": fa.L2FMNAttack, "fmn_l1": fa.L1FMNAttack}
            return cls[name](**p), None
        init_steps = p.pop("init_steps")
        if name == "pointwise_l1":
            return fa.PointwiseAttack(**p), fa.SaltAndPepperNoiseAttack(steps=init_steps)
        init = fa.LinearSearchBlendedUniformNoiseAttack(steps=init_steps)
        if name == "boundary_l2":
            return fa.BoundaryAttack(**p, tensorboard=False), init
        constraint = "linf" if name == "hsj_linf" else "l2"
        return fa.HopSkipJumpAttack(**p, constraint=constraint, tensorboard=False), init

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, box: tuple[float, float],
                seed: int) -> Tensor:
        fb = require("foolbox", attack=self.parsed.attack)
        fmodel = fb.PyTorchModel(model, bounds=box, device=x.device)
        attack, init = self._build(fb.attacks)
        if init is None:
            return attack.run(fmodel, x, fb.criteria.Misclassification(y))
        # Decision-based: start from noise that is already adversarial; inputs misclassified
        # as they are, or without such a start, keep the clean input.
        out = x.clone()
        with torch.no_grad():
            todo = (model(x).argmax(1) == y).nonzero().squeeze(1)
        if len(todo) == 0:
            return out
        xs, ys = x[todo], y[todo]
        starts = init.run(fmodel, xs, fb.criteria.Misclassification(ys))
        with torch.no_grad():
            ok = model(starts).argmax(1) != ys
        if bool(ok.any()):
            sel = ok.nonzero().squeeze(1)
            adv = attack.run(fmodel, xs[sel], fb.criteria.Misclassification(ys[sel]),
                             starting_points=starts[sel])
            out[todo[sel]] = adv
        return out
