"""Evaluation attacks from well-kept libraries (foolbox 3, AutoAttack) behind our Attack interface.

    make_attack({"type": "foolbox", "attack": "boundary_l2", "epsilon": 2.0, "steps": 5000})
    make_attack({"type": "autoattack", "attack": "apgd-ce", "norm": "linf", "epsilon": 0.3})
    make_attack({"type": "autoattack", "version": "standard", "norm": "linf", "epsilon": 0.3})

Their specs (keys, defaults, validation) are in ``jobs.attacks.library_spec``. Both libraries are
regular dependencies of mpo (every shipped suite uses them). They are imported only when such an
attack runs or is built, never when ``jobs`` is imported, so ``mpo --help`` stays fast; a broken
install raises ``MissingLibraryError`` naming the package and the fix. Where a minimum-norm attack
finds no adversarial input, the clean input is returned (norm 0).

Seeds: the libraries draw from the global torch and numpy generators (AutoAttack reseeds the
global torch generator itself), so each call draws one seed from the ``generator`` passed in
(seed 0 without one), seeds torch and numpy with it inside a forked RNG state and restores the
global state after. Same generator seed, same inputs: the same result.

Devices: the attacks run on the inputs' device. Box: foolbox and AutoAttack need a bounded input
box; for unbounded data (``bounds=None``, the toy distribution) the box is
``[min(x) - m, max(x) + m]`` per batch with ``m = (max(x) - min(x)) + 2 * epsilon``, so the box
never binds a perturbation inside the ball. AutoAttack assumes inputs in [0, 1]: other boxes are
mapped affinely to [0, 1] (model and radius rescaled with them).
"""

from __future__ import annotations

import contextlib
import importlib
import math
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.attacks.base import BUDGET_RTOL, Attack, AttackResult, RunOutput
from jobs.attacks.checks import AttackSpecError
from jobs.attacks.norms import perturbation_norm
from jobs.errors import MpoError

if TYPE_CHECKING:
    from foolbox.attacks.base import MinimizationAttack
    from pyautoattack import AutoAttack

    from jobs.attacks.library_spec import AutoAttackStandardSpec, LibrarySpec

#: The library behind each spec type: (import name, distribution name).
PACKAGES = {"foolbox": ("foolbox", "foolbox"), "autoattack": ("pyautoattack", "pyautoattack")}
#: AutoAttack's names of the l_p families.
AUTOATTACK_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}


class MissingLibraryError(MpoError, ImportError):
    """An attack library cannot be imported (a broken or partial install)."""


def require(package: str, *, attack: str) -> ModuleType:
    """Import an attack library or raise a clear error naming the package and the fix."""
    try:
        return importlib.import_module(package)
    except ImportError as err:
        dist = {imp: dist for imp, dist in PACKAGES.values()}.get(package, package)
        raise MissingLibraryError(
            f"attack {attack!r} needs the package '{dist}' (import name '{package}'), which "
            f"cannot be imported ({err}); it is one of mpo's dependencies: reinstall mpo "
            f"(`pip install -e .` in the checkout) or `pip install {dist}`"
        ) from None


# ----------------------------------------------------------------------------------------------
# Shared machinery


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch (CPU and the inputs' CUDA device) and numpy; restore both afterwards."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if (
        device.type == "cuda") else []
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        np.random.set_state(np_state)


def draw_seed(generator: torch.Generator | None) -> int:
    """One seed for a library call, drawn from the caller's generator (0 without one)."""
    if generator is None:
        return 0
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))


class _Scaled(nn.Module):
    """model(lo + (hi - lo) * u): the model seen on [0, 1] inputs (AutoAttack's box)."""

    def __init__(self, model: nn.Module, lo: float, hi: float):
        super().__init__()
        self.model, self.lo, self.scale = model, lo, hi - lo

    def forward(self, u: Tensor) -> Tensor:
        return self.model(self.lo + self.scale * u)


class LibraryAttack(Attack):
    """Base of the wrappers: box, seeding, scoring; subclasses implement ``_attack``."""

    package: str

    def __init__(self, spec: LibrarySpec | AutoAttackStandardSpec, *,
                 bounds: tuple[float, float] | None):
        self.parsed = spec
        self.family = spec.family
        self.epsilon = spec.epsilon
        self.spec = spec.to_dict()
        self.bounds = bounds
        self.gradient_free = spec.entry.gradient_free
        self.bounded = spec.entry.bounded
        self.total_steps = self._cost()
        require(self.package, attack=spec.attack)

    def _cost(self) -> int:
        return 1

    def _budget(self) -> float:
        return self.epsilon if self.bounded else math.inf

    def box(self, x: Tensor) -> tuple[float, float]:
        if self.bounds is not None:
            return self.bounds
        lo, hi = float(x.min()), float(x.max())
        margin = (hi - lo) + 2 * self.epsilon
        return lo - margin, hi + margin

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> RunOutput:
        seed = draw_seed(generator)
        if len(x) == 0:
            x_adv = x.clone()
        else:
            with seeded(seed, x.device):
                x_adv = self._attack(model, x, y, self.box(x), seed).detach().to(x.dtype)
        with torch.no_grad():
            logits = model(x_adv) if len(x) else torch.zeros(0, 1, device=x.device)
        pred = logits.argmax(1)
        if self.bounded:
            # A library iterate beyond the radius (float rounding of its own projection) does
            # not count: keep the clean input there, as the in-ball rule would.
            outside = perturbation_norm(x_adv - x, self.family) > self.epsilon * (1 + BUDGET_RTOL)
        else:
            outside = torch.zeros_like(y, dtype=torch.bool)
        keep = (pred != y) & ~outside
        if not bool(keep.all()):
            x_adv = torch.where(keep.reshape(-1, *[1] * (x.dim() - 1)), x_adv, x)
            with torch.no_grad():
                logits = model(x_adv)
            pred = logits.argmax(1)
        loss = F.cross_entropy(logits, y, reduction="none") if len(x) else x.new_zeros(0)
        return RunOutput(x_adv=x_adv, loss=loss, pred=pred)

    def _measure(self, x: Tensor, x_adv: Tensor, transform: Tensor | None) -> Tensor:
        return perturbation_norm(x_adv - x, self.family)

    @abstractmethod
    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, box: tuple[float, float],
                seed: int) -> Tensor:
        """The library's adversarial inputs for ``x`` (the subclass runs its library here)."""


# ----------------------------------------------------------------------------------------------
# foolbox


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


# ----------------------------------------------------------------------------------------------
# AutoAttack


class AutoAttackAttack(LibraryAttack):
    """One AutoAttack component (APGD-CE, APGD-T, FAB-T or Square) at one radius and norm."""

    package = "pyautoattack"

    def _cost(self) -> int:
        p = dict(self.parsed.params)
        name = self.parsed.attack
        if name == "square":
            return p["n_queries"] * p["n_restarts"]
        per = p["n_iter"] * p["n_restarts"]
        return per * p["n_target_classes"] if name in ("apgd-t", "fab-t") else per

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, box: tuple[float, float],
                seed: int) -> Tensor:
        name = self.parsed.attack
        require("pyautoattack", attack=name)
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
        from pyautoattack.fab_pt import FABAttack_PT
        from pyautoattack.square import SquareAttack

        lo, hi = box
        scaled = _Scaled(model, lo, hi)
        u = (x - lo) / (hi - lo)
        eps = self.epsilon / (hi - lo)
        norm = AUTOATTACK_NORMS[self.family]
        p = dict(self.parsed.params)
        with torch.no_grad():
            num_classes = scaled(u[:1]).shape[1]
        common = {"norm": norm, "eps": eps, "seed": seed, "device": x.device, "verbose": False}
        if name in ("apgd-t", "fab-t"):
            if name == "apgd-t" and num_classes < 4:
                raise AttackSpecError(
                    f"autoattack 'apgd-t' uses the targeted DLR loss, which needs at least 4 "
                    f"classes; the model has {num_classes}"
                )
            # There are only num_classes - 1 other classes to target.
            p["n_target_classes"] = min(p["n_target_classes"], num_classes - 1)
        if name == "apgd-ce":
            atk = APGDAttack(scaled, loss="ce", **common, **p)
            adv = atk.perturb(u, y)
        elif name == "apgd-t":
            atk = APGDAttack_targeted(scaled, **common, **p)
            adv = atk.perturb(u, y)
        elif name == "fab-t":
            atk = FABAttack_PT(scaled, targeted=True, **common, **p)
            adv = atk.perturb(u, y)
        else:
            atk = SquareAttack(scaled, resc_schedule=False, **common, **p)
            adv = atk.perturb(u, y)
        return lo + (hi - lo) * adv.to(x.dtype)


# ----------------------------------------------------------------------------------------------
# AutoAttack's standard ensemble

#: Inputs per call of a component: run_standard_evaluation's default ``batch_size``. The results
#: depend on it (each call reseeds), so it is AutoAttack's, not ours to choose.
AUTOATTACK_BATCH = 250


@dataclass(frozen=True)
class EnsembleResult(AttackResult):
    """An ensemble's result: per input, the component whose adversarial input it holds ("" for
    an input no component fooled)."""

    component: tuple[str, ...] = ()


def _apgd_ce(aa: AutoAttack, x: Tensor, y: Tensor) -> Tensor:
    aa.apgd.loss = "ce"
    aa.apgd.seed = aa.get_seed()
    return aa.apgd.perturb(x, y)


def _apgd_t(aa: AutoAttack, x: Tensor, y: Tensor) -> Tensor:
    aa.apgd_targeted.seed = aa.get_seed()
    return aa.apgd_targeted.perturb(x, y)


def _fab_t(aa: AutoAttack, x: Tensor, y: Tensor) -> Tensor:
    aa.fab.targeted = True
    aa.fab.n_restarts = 1
    aa.fab.seed = aa.get_seed()
    return aa.fab.perturb(x, y)


def _square(aa: AutoAttack, x: Tensor, y: Tensor) -> Tensor:
    aa.square.seed = aa.get_seed()
    return aa.square.perturb(x, y)


#: How run_standard_evaluation calls each component of the standard version.
COMPONENTS: dict[str, Callable[[AutoAttack, Tensor, Tensor], Tensor]] = {
    "apgd-ce": _apgd_ce, "apgd-t": _apgd_t, "fab-t": _fab_t, "square": _square,
}


def run_standard(aa: AutoAttack, x: Tensor, y: Tensor, *,
                 batch_size: int = AUTOATTACK_BATCH) -> tuple[Tensor, list[str]]:
    """``aa.run_standard_evaluation(x, y)`` step for step (its attack objects, order, seeds and
    batches: the same robust flags and adversarial inputs), also recording, per input, the
    component that fooled it ("" for none). x [n, ...] in [0, 1], y [n] -> (x_adv, components).

    AutoAttack's own function returns only the adversarial inputs; its per-attack bookkeeping
    is what this repeats. Clean-misclassified inputs are not attacked (component "")."""
    n = x.shape[0]
    component = [""] * n
    with torch.no_grad():
        robust = torch.zeros(n, dtype=torch.bool, device=x.device)
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            robust[sl] = aa.get_logits(x[sl]).max(dim=1)[1] == y[sl]
        x_adv = x.clone()
        for name in aa.attacks_to_run:
            todo = robust.nonzero().flatten()
            if todo.numel() == 0:
                break
            for start in range(0, todo.numel(), batch_size):
                idx = todo[start : start + batch_size]
                xb, yb = x[idx].clone(), y[idx].clone()
                adv = COMPONENTS[name](aa, xb, yb)
                fooled = aa.get_logits(adv).max(dim=1)[1] != yb
                broken = idx[fooled]
                robust[broken] = False
                x_adv[broken] = adv[fooled].detach()
                for i in broken.tolist():
                    component[i] = name
    return x_adv, component


class AutoAttackStandard(LibraryAttack):
    """AutoAttack's standard ensemble (APGD-CE, APGD-T, FAB-T, Square) at one radius and norm,
    as ``AutoAttack(model, norm, eps, seed, version="standard").run_standard_evaluation`` runs
    it. Its results are ``EnsembleResult``: which component broke each input."""

    package = "pyautoattack"
    parsed: AutoAttackStandardSpec

    def __init__(self, spec: AutoAttackStandardSpec, *, bounds: tuple[float, float] | None):
        super().__init__(spec, bounds=bounds)
        # what _attack found, handed to __call__ (RunOutput has no field for it)
        self._components: list[str] = []

    def _cost(self) -> int:
        settings = self.parsed.component_settings()
        apgd, targeted, fab = settings["apgd-ce"], settings["apgd-t"], settings["fab-t"]
        return (int(apgd["n_iter"]) * int(apgd["n_restarts"])
                + int(targeted["n_iter"]) * int(targeted["n_target_classes"])
                + int(fab["n_iter"]) * int(fab["n_target_classes"])
                + int(settings["square"]["n_queries"]))

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None = None) -> EnsembleResult:
        self._components = [""] * x.shape[0]
        result = super().__call__(model, x, y, generator=generator)
        component = tuple(c if hit else "" for c, hit in zip(self._components, result.success.tolist(),
                                                             strict=True))
        return EnsembleResult(**{f.name: getattr(result, f.name) for f in fields(result)},
                              component=component)

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, box: tuple[float, float],
                seed: int) -> Tensor:
        require("pyautoattack", attack="autoattack version 'standard'")
        from pyautoattack import AutoAttack

        lo, hi = box
        scaled = _Scaled(model, lo, hi)
        u = (x - lo) / (hi - lo)
        with torch.no_grad():
            num_classes = scaled(u[:1]).shape[1]
        targets = max(int(s.get("n_target_classes", 0)) for s in self.parsed.component_settings().values())
        if num_classes <= targets:
            raise AttackSpecError(
                f"autoattack version 'standard' targets {targets} other classes (apgd-t, fab-t): "
                f"it needs a model with at least {targets + 1} classes; the model has {num_classes}"
            )
        aa = AutoAttack(scaled, norm=AUTOATTACK_NORMS[self.family], eps=self.epsilon / (hi - lo),
                        seed=seed, version=self.parsed.version, device=x.device)
        adv, self._components = run_standard(aa, u, y)
        return lo + (hi - lo) * adv.to(x.dtype)
