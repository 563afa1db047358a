"""The attack interface, the result type and the shared pieces of every gradient loop.

An attack type is a spec class (``jobs.attacks.specbase.AttackSpec``: parsing, scaling, the
ball of the in-ball rule, building; torch-free) and an ``Attack`` subclass (the attack it builds).
``Attack.__call__`` does the shared work once: checks the inputs, puts the model in eval mode
(and restores its mode), runs the subclass's ``_run``, and builds the ``AttackResult``, where
the constraints are asserted: a perturbation outside the budget or an input outside the box is
a bug and raises ``AttackConstraintError``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.attacks.specbase import BUDGET_RTOL, Bounds

__all__ = ["BEST", "BUDGET_RTOL", "CLEAN_INPUT", "FIRST_FOOLED", "LIBRARY", "SMALLEST", "WORST_CASE",
           "Attack",
           "AttackConstraintError", "AttackResult", "Best", "Bounds", "RunOutput", "input_grad",
           "margin_grad_output", "margin_loss"]


class AttackConstraintError(AssertionError):
    """An attack produced an input outside its budget or the box (a bug, never expected)."""


@dataclass(frozen=True)
class AttackResult:
    """What every attack returns, per input of a batch of B.

    x_adv [B, ...]; success bool [B] (model misclassifies x_adv); loss float [B] (cross-entropy
    at x_adv); pred long [B]; norm float [B] (size in the attack's own measure: the l_p norm for
    linf/l2/l1, a fraction of the budget for rt and the affine attacks); transform float [B, 3]
    (tx px, ty px, angle degrees) for attacks with a spatial part, else None.
    """

    x_adv: Tensor
    success: Tensor
    loss: Tensor
    pred: Tensor
    norm: Tensor
    transform: Tensor | None = None
    #: an ensemble's result: per input, the component whose adversarial input it holds ("" for
    #: an input no component fooled); None for an attack that is not an ensemble
    component: tuple[str, ...] | None = None


@dataclass
class RunOutput:
    """What a subclass's ``_run`` hands back to ``Attack.__call__``."""

    x_adv: Tensor
    loss: Tensor
    pred: Tensor
    transform: Tensor | None = None
    component: list[str] | None = None  # an ensemble's, per input (see AttackResult)


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """[B, K], [B] -> [B]: max_{j != y} z_j - z_y (the CW margin; > 0 means misclassified)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.amax(1) - z_y


def margin_grad_output(logits: Tensor, y: Tensor) -> Tensor:
    """[B, K], [B] -> [B, K]: the gradient of the summed ``margin_loss`` w.r.t. the logits,
    +1 at each input's highest other class and -1 at its label (at a tie, the first class)."""
    z = logits.detach()
    runner_up = z.scatter(1, y[:, None], float("-inf")).argmax(1, keepdim=True)
    return torch.zeros_like(z).scatter_(1, runner_up, 1.0).scatter_(1, y[:, None], -1.0)


def input_grad(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """One forward + backward: (gradient of the summed margin loss w.r.t. x, detached logits).

    The margin's gradient w.r.t. the logits is a difference of one-hot rows, so it is computed
    without autograd and handed to one backward pass as its ``grad_outputs`` (no graph for the
    loss). Only the input gradient is requested, so autograd skips the weight gradients.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        (grad,) = torch.autograd.grad(logits, x, margin_grad_output(logits, y))
    return grad, logits.detach()


class Best:
    """Per-input best candidate: a misclassified one wins, else the higher cross-entropy."""

    def __init__(self, x: Tensor, num: int | None = None):
        n = x.shape[0] if num is None else num
        self.x = x.detach().clone()
        self.loss = torch.full((n,), float("-inf"), device=x.device, dtype=x.dtype)
        self.pred = torch.full((n,), -1, device=x.device, dtype=torch.long)
        self.success = torch.zeros(n, device=x.device, dtype=torch.bool)

    @staticmethod
    def better(success: Tensor, loss: Tensor, than_success: Tensor, than_loss: Tensor) -> Tensor:
        return (success & ~than_success) | ((success == than_success) & (loss > than_loss))

    def update(self, x: Tensor, logits: Tensor, y: Tensor, rows: Tensor | None = None) -> None:
        """Offer candidates x [B, ...] whose logits [B, K] are already known (no forward here);
        ``rows`` [B]: the tracker's inputs they are candidates for (None: all, in order)."""
        loss = F.cross_entropy(logits, y, reduction="none")
        pred = logits.argmax(1)
        if rows is None:
            self.offer(x, loss, pred, pred != y)
        else:
            self.offer_rows(rows, x, loss, pred, pred != y)

    def still_robust(self, rows: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """For an attack that stops inputs once fooled, after a step on the batch ``rows`` (of
        the full batch; None: all of it): None when no input of it was fooled; else (``keep``:
        the positions in the batch of the inputs still robust, empty when none is; the full
        batch's rows of those inputs, the ``rows`` of the next step)."""
        left = ~self.success if rows is None else ~self.success[rows]
        if bool(left.all()):
            return None
        keep = left.nonzero().squeeze(1)
        return keep, (keep if rows is None else rows[keep])

    def score_unfooled(self, model: nn.Module, x: Tensor, y: Tensor, rows: Tensor | None = None) -> None:
        """Score candidates x [B, ...] (for ``rows``, as in ``update``) with one forward pass
        and offer them to the inputs that no earlier candidate fooled (for a fooled input the
        success cannot change).

        On the CPU, or for a subset of rows, only those inputs go through the model (on the CPU
        reading which they are costs nothing); on other devices every input does, and the
        others' candidates are masked out, so the host never waits for the device. The result
        is the same either way."""
        with torch.no_grad():
            if x.device.type == "cpu" or rows is not None:
                idx = (~self.success if rows is None else ~self.success[rows]).nonzero().squeeze(1)
                if idx.numel():
                    xs, ys = x[idx], y[idx]
                    self.update(xs, model(xs), ys, idx if rows is None else rows[idx])
                return
            logits = model(x)
            done = self.success
            loss = F.cross_entropy(logits, y, reduction="none").masked_fill(done, float("-inf"))
            pred = logits.argmax(1)
            self.offer(x, loss, pred, (pred != y) & ~done)

    def offer_rows(self, rows: Tensor, x: Tensor, loss: Tensor, pred: Tensor, success: Tensor) -> None:
        """``offer`` for candidates of the inputs ``rows`` [B] (distinct) only."""
        take = self.better(success, loss, self.success[rows], self.loss[rows])
        sel = rows[take]
        self.x[sel], self.loss[sel] = x[take].detach(), loss[take]
        self.pred[sel], self.success[sel] = pred[take], success[take]

    def offer(self, x: Tensor, loss: Tensor, pred: Tensor, success: Tensor) -> Tensor:
        take = self.better(success, loss, self.success, self.loss)
        self.x = torch.where(take.reshape(-1, *([1] * (x.dim() - 1))), x.detach(), self.x)
        self.loss = torch.where(take, loss, self.loss)
        self.pred = torch.where(take, pred, self.pred)
        self.success = self.success | success
        return take

    def merge(self, idx: Tensor, other: Best) -> Tensor:
        """Merge a tracker over the subset idx (distinct) of this tracker's inputs.

        Returns the mask over idx of the candidates taken."""
        take = self.better(other.success, other.loss, self.success[idx], self.loss[idx])
        sel = idx[take]
        self.x[sel] = other.x[take]
        self.loss[sel] = other.loss[take]
        self.pred[sel] = other.pred[take]
        self.success[sel] = other.success[take]
        return take


#: What an attack's result holds for an input (the results' ``example`` column): the first
#: candidate that fooled it (an attack that stops when fooled), the best candidate of the whole
#: run (a misclassified one wins, else the highest cross-entropy), the smallest perturbation
#: found (a minimum-norm attack), the library's own choice, or the clean input (a library attack
#: that found nothing fooling the input); an exact attack's worst case in the ball (the largest
#: margin any perturbation reaches there).
FIRST_FOOLED, BEST, SMALLEST, LIBRARY = "first-fooled", "best", "smallest", "library"
WORST_CASE = "worst-case"
CLEAN_INPUT = "clean"


class Attack(ABC):
    """Base class: ``attack(model, x, y, generator=...) -> AttackResult``.

    Attributes: ``family`` (str), ``epsilon`` (float; nan for rt, 1.0 for the affine attacks,
    whose norm is a fraction of the combined budget), ``spec`` (canonical JSON-able dict),
    ``total_steps`` (forward-backward passes per input; forward passes for rt), ``bounds``.

    ``stop_when_fooled`` (evaluation; an attack that can, ``can_stop``): an input leaves the
    attack at its first fooled candidate. The same inputs end up fooled as without (inputs are
    attacked independently and the random draws do not depend on it), for fewer passes; a
    fooled input's example is then that first candidate, not the best (training wants the
    best, so it is off by default).
    """

    family: str
    epsilon: float
    spec: dict[str, Any]
    total_steps: int
    bounds: Bounds
    #: can this attack stop an input at its first fooled candidate?
    can_stop: bool = False
    stop_when_fooled: bool = False
    #: what a fooled / an unfooled input's example is, when the attack does not stop early
    kept: tuple[str, str] = (BEST, BEST)

    def example(self, fooled: bool) -> str:
        """What this attack's result holds for an input it fooled (or not): ``FIRST_FOOLED``,
        ``BEST``, ``SMALLEST``, ``LIBRARY`` or ``CLEAN_INPUT``."""
        if fooled and self.stop_when_fooled and self.can_stop:
            return FIRST_FOOLED
        return self.kept[0] if fooled else self.kept[1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec})"

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> AttackResult:
        """x [B, ...] float inputs inside bounds, y [B] long labels -> AttackResult."""
        self._check_inputs(x, y, generator)
        was_training = model.training
        model.eval()
        try:
            out = self._run(model, x.detach(), y, generator)
        finally:
            model.train(was_training)
        x_adv = out.x_adv.detach()
        if self.bounds is not None:
            x_adv = x_adv.clamp(*self.bounds)  # removes float rounding of x0 + delta only
        norm = self._measure(x, x_adv, out.transform)
        success = out.pred != y
        component = None if out.component is None else tuple(
            c if hit else "" for c, hit in zip(out.component, success.tolist(), strict=True))
        result = AttackResult(
            x_adv=x_adv,
            success=success,
            loss=out.loss.detach(),
            pred=out.pred,
            norm=norm,
            transform=out.transform,
            component=component,
        )
        self._assert_constraints(result)
        return result

    def _check_inputs(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> None:
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if y.dtype != torch.long or y.shape != (x.shape[0],):
            raise ValueError(f"y must be a long tensor of shape [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}")
        if generator is not None and generator.device.type != x.device.type:
            raise ValueError(
                f"generator is on {generator.device}, inputs on {x.device}: make the generator "
                "on the inputs' device"
            )
        if self.bounds is not None and x.numel():
            lo, hi = self.bounds
            if float(x.min()) < lo or float(x.max()) > hi:
                raise ValueError(
                    f"inputs lie outside bounds {self.bounds} (min {float(x.min())}, max {float(x.max())})"
                )

    def _budget(self) -> float:
        return self.epsilon

    def _assert_constraints(self, r: AttackResult) -> None:
        budget = self._budget()
        limit = budget * (1 + BUDGET_RTOL) + (0.0 if budget > 0 else 1e-12)
        if r.norm.numel() and not math.isnan(budget) and float(r.norm.max()) > limit:
            raise AttackConstraintError(
                f"{self!r}: perturbation of size {float(r.norm.max())} exceeds the budget {budget}"
            )
        if self.bounds is not None and r.x_adv.numel():
            lo, hi = self.bounds
            if float(r.x_adv.min()) < lo or float(r.x_adv.max()) > hi:
                raise AttackConstraintError(f"{self!r}: adversarial input outside the box {self.bounds}")

    @abstractmethod
    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> RunOutput:
        """The attack proper, on a model already in eval mode."""

    @abstractmethod
    def _measure(self, x: Tensor, x_adv: Tensor, transform: Tensor | None) -> Tensor:
        """[B] size of x_adv - x in this attack's measure (computed from the outputs only)."""
