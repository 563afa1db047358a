"""What the wrappers of library attacks (foolbox 3: ``jobs.attacks.foolbox``, AutoAttack:
``jobs.attacks.autoattack``) share behind our Attack interface: the import check, seeding, the
input box and the scoring of the library's result.

Both libraries are
regular dependencies of mpo (every shipped suite uses them). They are imported only when such an
attack runs or is built, never when ``jobs`` is imported, so ``mpo --help`` stays fast; a broken
install raises ``MpoError`` naming the package and the fix. Where a minimum-norm attack
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
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.attacks.base import BUDGET_RTOL, CLEAN_INPUT, LIBRARY, SMALLEST, Attack, Bounds, RunOutput
from jobs.attacks.norms import perturbation_norm
from jobs.errors import MpoError

if TYPE_CHECKING:
    from jobs.attacks.autoattack.spec import AutoAttackStandardSpec
    from jobs.attacks.library.spec import LibrarySpec


#: The library behind each spec type: (import name, distribution name).
PACKAGES = {"foolbox": ("foolbox", "foolbox"), "autoattack": ("pyautoattack", "pyautoattack")}


def require(package: str, *, attack: str) -> ModuleType:
    """Import an attack library or raise a clear error naming the package and the fix."""
    try:
        return importlib.import_module(package)
    except ImportError as err:
        dist = {imp: dist for imp, dist in PACKAGES.values()}.get(package, package)
        raise MpoError(
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


class UnitScaled(nn.Module):
    """model(lo + (hi - lo) * u): the model seen on [0, 1] inputs (AutoAttack's box)."""

    def __init__(self, model: nn.Module, lo: float, hi: float):
        super().__init__()
        self.model, self.lo, self.scale = model, lo, hi - lo

    def forward(self, u: Tensor) -> Tensor:
        return self.model(self.lo + self.scale * u)


class LibraryAttack(Attack):
    """Base of the wrappers: box, seeding, scoring; subclasses implement ``_attack``."""

    package: str

    def __init__(self, spec: LibrarySpec | AutoAttackStandardSpec, *, bounds: Bounds):
        self.parsed = spec
        self.family = spec.family
        self.epsilon = spec.epsilon
        self.spec = spec.to_dict()
        self.bounds = bounds
        self.gradient_free = spec.entry.gradient_free
        # a minimum-norm attack returns the smallest perturbation it found, whatever its size
        self.bounded = not spec.minimum_norm
        # what a row holds (``Attack.example``): an input not fooled keeps its clean image
        self.kept = (LIBRARY if self.bounded else SMALLEST, CLEAN_INPUT)
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
