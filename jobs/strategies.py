"""Training strategies: one interface, ``strategy(model, x, y, attacks, generator=...) -> StepOutput``.

- ``nat``: cross-entropy on the clean batch.
- ``single``: cross-entropy on one attack's adversarial batch (Adv_inf, Adv_1, Adv_2, Adv_RT).
- ``avg``: the K attacks' adversarial batches concatenated (K x B inputs), the paper's default.
- ``max``: per input, the adversarial example of the attack with the highest cross-entropy.
- ``random``: per batch, one of the K attacks drawn uniformly; trains on its batch.
- ``eat``: per batch, one of the K attacks drawn with E-AT's weights (Croce & Hein, ICML 2022);
  trains on its batch.
- ``msd``: one MSD attack (Maini, Wong & Kolter, ICML 2020; ``jobs.attacks.msd``) over the balls of
  the K l_p attacks, built from their specs (same radii, step sizes and k); trains on its batch.

``random`` and ``eat`` cost one attack per step whatever K is ("the price of one"). They carry
state (their generator; E-AT's running robust accuracies) that ``state_dict`` hands to the resume
state, so an interrupted run resumes bit for bit.

Attacks run in eval mode and hand the model back in the mode they found it (the attack library
does that); the strategy then runs the training forward pass in the caller's mode. Nothing here
reads a tensor on the host, except E-AT's draw, which depends on the previous batch's result.
"""

from __future__ import annotations

import bisect
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from jobs.strategy_table import strategy

if TYPE_CHECKING:
    from jobs.attacks.base import Attack, AttackResult


@dataclass
class StepOutput:
    """What one training step produced, on the device (nothing here waits for the device).

    ``loss``: scalar to back-propagate. ``n``: B, the number of clean inputs.
    ``adv_correct``: long ``[K]``, per training attack (in the order given), how many of the
    inputs it attacked the model still classified correctly at the attack's example.
    ``attacked``: ``[K]``, how many inputs each attack ran on (B for every attack it ran).
    """

    loss: torch.Tensor
    n: int
    adv_correct: torch.Tensor
    attacked: list[int] = field(default_factory=list)


def _run_attacks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[Attack],
    generator: torch.Generator | None,
) -> list[AttackResult]:
    return [attack(model, x, y, generator=generator) for attack in attacks]


def _robust(results: Sequence[AttackResult]) -> torch.Tensor:
    """``[K]`` long: per attack result, the inputs it did not fool (a device tensor, no sync)."""
    return torch.stack([(~r.success).sum() for r in results])


def nat(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Attack], *,
        generator: torch.Generator | None = None) -> StepOutput:
    """Clean training: ``attacks`` is ignored (and empty in a valid config)."""
    none = torch.zeros(0, dtype=torch.long, device=x.device)
    return StepOutput(loss=F.cross_entropy(model(x), y), n=len(y), adv_correct=none)


def single(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Attack], *,
           generator: torch.Generator | None = None) -> StepOutput:
    """Adversarial training against exactly one attack."""
    strategy("single").check_attack_count(len(attacks))
    (res,) = _run_attacks(model, x, y, attacks, generator)
    return StepOutput(
        loss=F.cross_entropy(model(res.x_adv.detach()), y),
        n=len(y),
        adv_correct=_robust([res]),
        attacked=[len(y)],
    )


def avg(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Attack], *,
        generator: torch.Generator | None = None) -> StepOutput:
    """Train on every attack's batch: inputs ``[K*B, ...]``, labels ``y`` repeated K times."""
    strategy("avg").check_attack_count(len(attacks))
    results = _run_attacks(model, x, y, attacks, generator)
    x_all = torch.cat([r.x_adv.detach() for r in results])
    y_all = y.repeat(len(results))
    return StepOutput(
        loss=F.cross_entropy(model(x_all), y_all),
        n=len(y),
        adv_correct=_robust(results),
        attacked=[len(y)] * len(results),
    )


def select_max(losses: torch.Tensor) -> torch.Tensor:
    """``losses`` ``[K, B]`` -> index ``[B]`` of the attack with the highest loss per input.

    Ties go to the earlier attack (``argmax`` returns the first maximum)."""
    return losses.argmax(dim=0)


def max_(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Attack], *,
         generator: torch.Generator | None = None) -> StepOutput:
    """Train on the per-input worst example: the attack whose example has the highest
    cross-entropy (``AttackResult.loss``, measured by the attack in eval mode)."""
    strategy("max").check_attack_count(len(attacks))
    results = _run_attacks(model, x, y, attacks, generator)
    stacked = torch.stack([r.x_adv.detach() for r in results])  # [K, B, ...]
    losses = torch.stack([r.loss.detach().to(stacked.device) for r in results])  # [K, B]
    pick = select_max(losses)
    x_max = stacked[pick, torch.arange(len(y), device=stacked.device)]
    return StepOutput(
        loss=F.cross_entropy(model(x_max), y),
        n=len(y),
        adv_correct=_robust(results),
        attacked=[len(y)] * len(results),
    )


StepFn = Callable[..., StepOutput]


# ----------------------------------------------------------------------------------------------
# Strategy objects: what the training loop holds (a step function plus its resume state)


class TrainingStrategy(ABC):
    """``strategy(model, x, y, attacks, generator=...) -> StepOutput``, with a resume state.

    x ``[B, ...]``, y ``[B]``; ``generator`` drives the attacks' random starts."""

    name: str

    @abstractmethod
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 attacks: Sequence[Attack], *, generator: torch.Generator | None = None) -> StepOutput:
        """One step's loss and metrics."""

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs (tensors, numbers and lists only): nothing, unless overridden."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (here: nothing, so anything else is refused)."""
        if state:
            raise ValueError(f"strategy '{self.name}' keeps no state, got keys {sorted(state)}")


class Stateless(TrainingStrategy):
    """A strategy that is a plain step function (nat, single, avg, max)."""

    def __init__(self, name: str, step: StepFn):
        self.name, self.step = name, step

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 attacks: Sequence[Attack], *, generator: torch.Generator | None = None) -> StepOutput:
        return self.step(model, x, y, attacks, generator=generator)


class OneAttackPerBatch(TrainingStrategy):
    """Per batch, draw one training attack with ``weights()`` and train on its examples.

    The draw is ``random.choices``' rule on a uniform number from this strategy's own CPU
    generator: the first index whose cumulative weight exceeds ``u * total``. A CPU generator
    keeps the draw off the device (no sync) and makes it the same on every device."""

    def __init__(self, *, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    @abstractmethod
    def weights(self, n_attacks: int) -> list[float]:
        """The (unnormalised) weight of each of the ``n_attacks`` attacks for the next batch."""

    def observe(self, index: int, result: AttackResult) -> None:
        """Hook: attack ``index`` produced ``result`` on this batch (E-AT's statistics)."""

    def draw(self, weights: Sequence[float]) -> int:
        cumulative = list(itertools.accumulate(weights))
        u = float(torch.rand((), dtype=torch.float64, generator=self.generator))
        return bisect.bisect(cumulative, u * cumulative[-1], 0, len(cumulative) - 1)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 attacks: Sequence[Attack], *, generator: torch.Generator | None = None) -> StepOutput:
        strategy(self.name).check_attack_count(len(attacks))
        pick = self.draw(self.weights(len(attacks)))
        res = attacks[pick](model, x, y, generator=generator)
        self.observe(pick, res)
        adv_correct = torch.zeros(len(attacks), dtype=torch.long, device=res.success.device)
        adv_correct[pick] = (~res.success).sum()
        attacked = [0] * len(attacks)
        attacked[pick] = len(y)
        return StepOutput(loss=F.cross_entropy(model(res.x_adv.detach()), y), n=len(y),
                          adv_correct=adv_correct, attacked=attacked)  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class RandomAttack(OneAttackPerBatch):
    """``random``: every attack equally likely, independently per batch."""

    name = "random"

    def weights(self, n_attacks: int) -> list[float]:
        return [1.0] * n_attacks


class EAT(OneAttackPerBatch):
    """``eat``: E-AT's sampling (Croce & Hein, "Adversarial robustness against multiple and
    single l_p-threat models via quick fine-tuning of robust classifiers", ICML 2022), exactly as
    its public code does it (fra31/robust-finetuning, ``train.py``, lines 179-212):

    - per attack i, a running robust accuracy ``r_i = correct_i / seen_i`` over every training
      batch attacked with i since training began (never reset between epochs), where an input
      counts as correct when the attack did not fool the model;
    - the next batch's attack is drawn with probability ``(1 - r_i) / sum_j (1 - r_j)``, so the
      threat model the model is weakest against is trained on most;
    - until every attack has been drawn once, all are equally likely.

    Where every ``r_i`` is 1 (every weight 0; the published code's ``random.choices`` would
    raise) the draw is uniform. The counts are Python ints, read from the device after each
    batch: the next draw depends on them, so E-AT waits for each batch's attack result.
    """

    name = "eat"

    def __init__(self, *, seed: int):
        super().__init__(seed=seed)
        self.correct: list[int] = []
        self.seen: list[int] = []

    def weights(self, n_attacks: int) -> list[float]:
        if not self.seen:
            self.correct, self.seen = [0] * n_attacks, [0] * n_attacks
        if len(self.seen) != n_attacks:
            raise ValueError(f"E-AT was tracking {len(self.seen)} attacks, got {n_attacks}")
        if not all(self.seen):
            return [1.0] * n_attacks
        weights = [1.0 - c / s for c, s in zip(self.correct, self.seen, strict=True)]
        return weights if sum(weights) > 0 else [1.0] * n_attacks

    def robust_accuracies(self) -> list[float]:
        """The running robust accuracy per attack (nan before its first batch)."""
        return [c / s if s else float("nan") for c, s in zip(self.correct, self.seen, strict=True)]

    def observe(self, index: int, result: AttackResult) -> None:
        self.correct[index] += int((~result.success).sum())
        self.seen[index] += len(result.success)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "correct": list(self.correct), "seen": list(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.correct, self.seen = list(state["correct"]), list(state["seen"])


class MSD(TrainingStrategy):
    """``msd``: adversarial training on one MSD attack over the balls of the K training attacks.

    The config's attacks are l_p specs with the same k, reps and random_start (checked when the
    config is validated, ``jobs.config.check_combined_attacks``); the MSD attack is built from them
    once per list of attacks (the training loop has two: ``start_small``'s and the full one).
    Per step and input it costs k forward+backward passes and k x K scoring forwards, where "max"
    costs K x k forward+backward passes and K forwards. MSD attacks the union of the balls, so
    every attack's ``adv_correct`` is the count of inputs it did not fool (and ``attacked`` is B
    for each): ``adv_acc/<family>`` is the robust accuracy against the union for every family.
    """

    name = "msd"

    def __init__(self) -> None:
        # id(list of attacks) -> (those attacks, kept so the ids stay theirs; their MSD attack)
        self._built: dict[tuple[int, ...], tuple[tuple[Attack, ...], Attack]] = {}

    def combined(self, attacks: Sequence[Attack]) -> Attack:
        """The MSD attack over ``attacks``' balls."""
        key = tuple(map(id, attacks))
        if key not in self._built:
            from jobs.attacks import make_attack
            from jobs.attacks.msd import MsdSpec

            spec = MsdSpec.combine([a.spec for a in attacks])
            self._built[key] = (tuple(attacks), make_attack(spec, bounds=attacks[0].bounds))
        return self._built[key][1]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 attacks: Sequence[Attack], *, generator: torch.Generator | None = None) -> StepOutput:
        strategy(self.name).check_attack_count(len(attacks))
        res = self.combined(attacks)(model, x, y, generator=generator)
        return StepOutput(loss=F.cross_entropy(model(res.x_adv.detach()), y), n=len(y),
                          adv_correct=_robust([res]).repeat(len(attacks)), attacked=[len(y)] * len(attacks))  # fmt: skip


#: strategy name (a row of ``jobs.strategy_table``) -> a new strategy from a seed (for its draws)
BUILDERS: dict[str, Callable[[int], TrainingStrategy]] = {
    "nat": lambda seed: Stateless("nat", nat),
    "single": lambda seed: Stateless("single", single),
    "avg": lambda seed: Stateless("avg", avg),
    "max": lambda seed: Stateless("max", max_),
    "random": lambda seed: RandomAttack(seed=seed),
    "eat": lambda seed: EAT(seed=seed),
    "msd": lambda seed: MSD(),
}


def get_strategy(name: str, *, seed: int = 0) -> TrainingStrategy:
    """A new strategy ``name``; ``seed`` seeds the attack draws of ``random`` and ``eat``."""
    return BUILDERS[strategy(name).name](seed)
