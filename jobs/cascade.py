"""Cascaded evaluation: run an expensive attack only on the inputs still robust after cheaper ones.

AutoAttack's idea, applied per results shard. A suite asks for it with ``cascade: true`` (for
every attack) or per attack with ``cascade: true | false | [names]``:

- ``true``: the attack runs after every earlier attack of the suite (file order, budget copies
  included) with the same family, budget, ball (radius, or RT limits) **and kind**. Keeping the
  kinds apart keeps the gradient-masking test exact: it compares the union of a family's
  first-order attacks with the union of its other attacks, and a cascade leaves every such union
  unchanged.
- ``[names]``: after exactly these earlier attacks (same family, budget and ball; any kind: a
  cross-kind cascade makes the masking test count the skipped inputs as fooled by both kinds).
- ``false`` (or absent without a suite-level ``cascade: true``): every input is attacked.

Rows stay complete. An input that is already not robust after the earlier attacks (fooled by
one of them, or misclassified clean) is not attacked; its row records it as fooled
(``fooled = True``, ``robust = False``) with the breaking attack's ``adv_pred``, ``perturbation``
and ``loss``. Which attack broke it is in the shard file's metadata (``mpo.shard`` ->
``cascade``: ``{"after": [names], "broken_by": {index: name or "clean"}}``;
``jobs.results.read_cascade``).
So a cascaded attack's rows give the cumulative verdict of the cascade up to it, and the family
verdict (robust to every attack of the family) is the same as running every attack on every
input, up to the randomness of the attacks (a random attack run on fewer inputs draws other
random numbers).

The evaluation runs a cascaded attack through its one loop (``jobs.evaluation.attack_inputs``)
with the ``CascadePrior`` as a mask: the inputs it skips keep the prior's values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from jobs.suite import SuiteAttack

#: ``broken_by`` value of an input misclassified without any attack.
CLEAN = "clean"

#: A suite attack's ``cascade`` field: None (the suite's default), true, false or earlier names.
CascadeRequest = bool | list[str] | None


def ball_signature(attack: SuiteAttack) -> tuple[str, float, Hashable]:
    """What must match for two suite attacks to share a cascade: the family, the budget and the
    ball of the in-ball rule (l_p radius; RT limits; the affine components)."""
    return (attack.family, round(float(attack.budget), 12), attack.ball().key)


def resolve_cascades(
    attacks: Sequence[SuiteAttack],
    requests: Mapping[str, tuple[str, CascadeRequest]],
    *,
    default: bool,
    fail: Callable[[str, str], Exception],
) -> list[SuiteAttack]:
    """Set ``after`` on each suite attack (copies are returned).

    attacks: the expanded suite attacks in file order (budget copies named ``name@b`` follow
    their attack). requests: base attack name -> (its position in the file as the error location
    ``attacks[i].cascade``, its ``cascade`` field).
    """
    out: list[SuiteAttack] = []
    by_name = {a.name: a for a in attacks}
    for pos, attack in enumerate(attacks):
        base, _, frac = attack.name.partition("@")
        where, request = requests.get(base, ("", None))
        request = default if request is None else request
        earlier = attacks[:pos]
        if request is False:
            after: tuple[str, ...] = ()
        elif request is True:
            sig = ball_signature(attack)
            after = tuple(
                a.name for a in earlier if ball_signature(a) == sig and a.kind == attack.kind
            )
        else:
            names = [f"{n}@{frac}" if frac else n for n in request]
            earlier_names = {a.name for a in earlier}
            for n in names:
                if n not in by_name or n not in earlier_names:
                    raise fail(where, f"{n!r} is not an attack listed before {attack.name!r}")
                if ball_signature(by_name[n]) != ball_signature(attack):
                    raise fail(
                        where, f"{n!r} has another family, budget or ball than {attack.name!r}; "
                        "a cascade runs within one family ball",
                    )
            after = tuple(dict.fromkeys(names))
        out.append(dataclasses.replace(attack, after=after))
    return out


@dataclass(frozen=True)
class CascadePrior:
    """Per input of a shard ([n] lists): whether to skip it, and the row values to record."""

    skip: list[bool]
    broken_by: list[str | None]
    adv_pred: list[int]
    perturbation: list[float]
    loss: list[float]

    @classmethod
    def attack_all(cls, n: int) -> CascadePrior:
        """No earlier attack: every one of the n inputs is attacked."""
        return prior_from_rows([], n)

    def broken_map(self, start: int) -> dict[str, str]:
        return {str(start + i): b for i, b in enumerate(self.broken_by) if b is not None}


def prior_from_rows(frames: Sequence[tuple[str, pd.DataFrame]], n: int) -> CascadePrior:
    """The cascade state after the earlier attacks, from their shard rows.

    frames: (attack name, DataFrame of its n rows in index order), in cascade order. An input
    not robust to some earlier attack is skipped; its values come from the first earlier attack
    that fooled it (``CLEAN`` and the first attack's values when it is misclassified clean).
    """
    skip = [False] * n
    broken: list[str | None] = [None] * n
    adv_pred, size, loss = [0] * n, [math.nan] * n, [math.nan] * n
    for name, df in frames:
        if len(df) != n:
            raise ValueError(f"cascade: attack {name!r} has {len(df)} rows for a shard of {n}")
        robust = df["robust"].tolist()
        clean = df["clean_correct"].tolist()
        by = df["broken_by"].tolist()
        preds, sizes, losses = df["adv_pred"].tolist(), df["perturbation"].tolist(), df["loss"].tolist()
        for i in range(n):
            if skip[i] or robust[i]:
                continue
            skip[i] = True
            # the row names what broke it (the attack that found the perturbation it holds)
            broken[i] = (by[i] or name) if clean[i] else CLEAN
            adv_pred[i], size[i], loss[i] = int(preds[i]), float(sizes[i]), float(losses[i])
    return CascadePrior(skip=skip, broken_by=broken, adv_pred=adv_pred, perturbation=size, loss=loss)


def chain_key(key: str, after_keys: Sequence[str]) -> str:
    """A cascaded shard's content key: its own and those of the shards it depends on."""
    if not after_keys:
        return key
    body = json.dumps({"key": key, "after": list(after_keys)})
    return hashlib.sha256(body.encode()).hexdigest()
