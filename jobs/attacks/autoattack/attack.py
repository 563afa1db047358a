"""AutoAttack's components and its standard ensemble behind our Attack interface (the spec:
``jobs.attacks.autoattack.spec``). AutoAttack assumes inputs in [0, 1]: other boxes are mapped
affinely to [0, 1], the model and the radius with them (``jobs.attacks.library.attack``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from jobs.attacks.base import RunOutput
from jobs.attacks.checks import AttackSpecError
from jobs.attacks.library.attack import LibraryAttack, UnitScaled, require

if TYPE_CHECKING:
    from pyautoattack import AutoAttack
    from pyautoattack.fab_pt import FABAttack_PT

    from jobs.attacks.autoattack.spec import AutoAttackStandardSpec

#: AutoAttack's names of the l_p families.
AUTOATTACK_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}


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
        scaled = UnitScaled(model, lo, hi)
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
        elif name == "fab-t" and self.parsed.minimum_norm:
            atk = FABAttack_PT(scaled, targeted=True, **common, **p)
            adv = fab_min_norm(atk, u, y, targets=p["n_target_classes"], eps=eps,
                               family=self.family)
        elif name == "fab-t":
            atk = FABAttack_PT(scaled, targeted=True, **common, **p)
            adv = atk.perturb(u, y)
        else:
            atk = square_class(SquareAttack)(scaled, resc_schedule=False, **common, **p)
            adv = atk.perturb(u, y)
        return lo + (hi - lo) * adv.to(x.dtype)


_SQUARE: dict[type, type] = {}


def square_class(base: type) -> type:
    """AutoAttack's ``SquareAttack`` with its window patterns memoised: ``eta_rectangles`` (a
    pure function of the window's shape and the norm, which AutoAttack rebuilds in a Python loop
    of small tensor operations at every l_2 and l_1 query) is built once per shape and attack.
    It draws no random numbers, so the attack draws the same ones and returns the same result,
    bit for bit (tests/test_library_attacks.py), 10-15% sooner on the CPU."""
    if base not in _SQUARE:

        class Square(base):  # type: ignore[misc, valid-type]
            def eta_rectangles(self, x: int, y: int) -> Tensor:
                cache = self.__dict__.setdefault("_mpo_eta", {})
                key = (x, y, self.norm)
                if key not in cache:
                    cache[key] = super().eta_rectangles(x, y)
                return cache[key].clone()

        _SQUARE[base] = Square
    return _SQUARE[base]


def fab_min_norm(fab: FABAttack_PT, x: Tensor, y: Tensor, *, targets: int, eps: float,
                 family: str) -> Tensor:
    """AutoAttack's FAB-T with one restart as a minimum-norm attack: x [n, ...] in [0, 1], y [n]
    -> per input the smallest adversarial input found over the target classes (the clean input
    where none was found).

    FAB-T's first restart starts at the clean input, so its search ignores the radius, which
    AutoAttack's ``perturb`` uses only to stop: it tries the targets (the 2nd to
    ``targets + 1``-th highest logits) in order and stops on an input at the first target that
    breaks it within ``eps``. Here each target runs (``attack_single_run``, the same search) on
    every input not yet broken within ``eps``, and the smallest perturbation is kept: at ``eps``
    this breaks the inputs FAB-T breaks, and at any larger radius, those FAB-T breaks there (it
    would try the same targets on them)."""
    from jobs.attacks.norms import perturbation_norm

    adv = x.clone()
    size = torch.full((x.shape[0],), float("inf"), device=x.device)
    with torch.no_grad():
        todo = fab._predict_fn(x).argmax(1) == y
    for target in range(2, targets + 2):
        idx = (todo & (size > eps)).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        fab.target_class = target
        cand = fab.attack_single_run(x[idx], y[idx], use_rand_start=False, is_targeted=True)
        with torch.no_grad():
            fooled = fab._predict_fn(cand).argmax(1) != y[idx]
        found = perturbation_norm(cand - x[idx], family)
        better = fooled & (found < size[idx])
        adv[idx[better]] = cand[better].to(adv.dtype)
        size[idx[better]] = found[better]
    return adv


#: Inputs per call of a component: run_standard_evaluation's default ``batch_size``. The results
#: depend on it (each call reseeds), so it is AutoAttack's, not ours to choose.
AUTOATTACK_BATCH = 250


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
    it. Its results say which component broke each input (``AttackResult.component``)."""

    package = "pyautoattack"
    parsed: AutoAttackStandardSpec

    def __init__(self, spec: AutoAttackStandardSpec, *, bounds: tuple[float, float] | None):
        super().__init__(spec, bounds=bounds)
        # what _attack found, handed to the RunOutput by _run
        self._components: list[str] = []

    def _cost(self) -> int:
        settings = self.parsed.component_settings()
        apgd, targeted, fab = settings["apgd-ce"], settings["apgd-t"], settings["fab-t"]
        return (int(apgd["n_iter"]) * int(apgd["n_restarts"])
                + int(targeted["n_iter"]) * int(targeted["n_target_classes"])
                + int(fab["n_iter"]) * int(fab["n_target_classes"])
                + int(settings["square"]["n_queries"]))

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> RunOutput:
        self._components = [""] * x.shape[0]
        out = super()._run(model, x, y, generator)
        out.component = self._components
        return out

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, box: tuple[float, float],
                seed: int) -> Tensor:
        require("pyautoattack", attack="autoattack version 'standard'")
        from pyautoattack import AutoAttack

        lo, hi = box
        scaled = UnitScaled(model, lo, hi)
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
