"""The training strategies, one row each: the one table that config validation, the cost model
and the report read (torch-free; the strategies themselves are ``jobs.strategies``).

A row says how many training attacks a strategy takes (and why, when it needs several), the
label its models take in the paper's tables, its place in a table's rows, and its passes per
training step: how many of its attacks' steps run per clean input (``all`` of them, ``one`` drawn
per batch, or ``union``: MSD's k steps with the k x K candidate forwards) and how many batches
the training pass sees (``avg`` trains on K x B inputs).

Adding a strategy: its class in ``jobs.strategies`` (and its entry in ``BUILDERS`` there), one
row here, and its tests (ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

#: The report's label of a single-attack model, by its attack's family (the paper's names).
SINGLE_LABELS = {"linf": "Adv_inf", "l1": "Adv_1", "l2": "Adv_2", "rt": "Adv_RT"}


@dataclass(frozen=True)
class StrategyRow:
    name: str
    #: the label its models take (single-attack models: ``SINGLE_LABELS`` by family)
    label: str
    #: what it trains on, for lists and messages
    summary: str
    #: the fewest and most training attacks (None: no upper bound)
    attacks: tuple[int, int | None]
    #: why it needs several attacks (the message for too few); "" when one will do
    several: str = ""
    #: which attack steps a training step runs per clean input
    attack_steps: Literal["none", "all", "one", "union"] = "all"
    #: batches of B inputs the training pass sees: 1, or one per attack (K)
    train_batches: Literal["one", "per-attack"] = "one"

    def check_attack_count(self, n: int) -> None:
        """``ValueError`` unless this strategy can train against ``n`` attacks."""
        fewest, most = self.attacks
        if fewest <= n and (most is None or n <= most):
            return
        if most == 0:
            raise ValueError(f"strategy '{self.name}' trains on clean inputs and takes no attacks, "
                             f"got {n}")
        if fewest == most:
            raise ValueError(f"strategy '{self.name}' needs exactly one attack, got {n}")
        if fewest == 1:
            raise ValueError(f"strategy '{self.name}' needs at least one attack, got none")
        raise ValueError(
            f"strategy '{self.name}' {self.several}: it needs at least {fewest} attacks, got {n} "
            "(with one attack, use strategy 'single')"
        )

    def passes_per_step(self, attack_steps: Sequence[int]) -> float:
        """Forward+backward passes per clean input of one training step, from each training
        attack's steps: its attacks' steps (all, one on average, or MSD's k steps with the
        k x K candidate forwards counted as full passes) plus the training pass."""
        k = len(attack_steps)
        attack = {"none": 0.0, "all": float(sum(attack_steps)),
                  "one": sum(attack_steps) / k if k else 0.0,
                  "union": float(attack_steps[0] * (1 + k)) if k else 0.0}[self.attack_steps]
        return attack + (k if self.train_batches == "per-attack" else 1)


_ONE_OF_SEVERAL = "trains each batch against one attack drawn from several"

#: Every strategy, in the order a report's rows list them (the paper's, then later work's).
STRATEGY_TABLE: tuple[StrategyRow, ...] = (
    StrategyRow("nat", "Nat", "clean inputs", (0, 0), attack_steps="none"),
    StrategyRow("single", "Adv_<family>", "one attack's examples", (1, 1)),
    StrategyRow("avg", "Adv_avg", "every attack's examples (K x B inputs), the paper's default",
                (1, None), train_batches="per-attack"),
    StrategyRow("max", "Adv_max", "per input, the attack example of highest cross-entropy",
                (1, None)),
    StrategyRow("msd", "Adv_msd", "one MSD attack over the l_p balls (Maini et al. 2020)",
                (2, None), "trains against one MSD attack over the l_p balls of several attacks",
                attack_steps="union"),
    StrategyRow("eat", "Adv_eat", "one attack per batch, drawn with E-AT's weights (Croce & Hein "
                "2022)", (2, None), _ONE_OF_SEVERAL, attack_steps="one"),
    StrategyRow("random", "Adv_rand", "one attack per batch, drawn uniformly", (2, None),
                _ONE_OF_SEVERAL, attack_steps="one"),
)
STRATEGIES: dict[str, StrategyRow] = {row.name: row for row in STRATEGY_TABLE}
#: Row order of model labels in a report: per strategy, its label (single: per family).
LABEL_ORDER: tuple[str, ...] = tuple(
    label for row in STRATEGY_TABLE
    for label in (SINGLE_LABELS.values() if row.name == "single" else (row.label,))
)


def strategy(name: str) -> StrategyRow:
    """The row of strategy ``name``; a ValueError listing the strategies for another name."""
    row = STRATEGIES.get(name)
    if row is None:
        raise ValueError(f"unknown strategy '{name}'; valid strategies: {', '.join(STRATEGIES)}")
    return row
