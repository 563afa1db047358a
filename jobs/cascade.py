"""Cascaded evaluation: attack an input only while it is still robust.

AutoAttack's idea, applied per results shard, in two directions:

- **Across radii** (always, unless an attack says ``cascade: false``): the copy of an attack at a
  budget point runs after the same attack at the next smaller point (``SuiteAttack.below``). The
  balls are nested, so an input the smaller copy fooled is fooled at the larger radius with the
  same perturbation; only the inputs still robust are attacked again. The attack's own rows at
  each radius stay the attack's own verdict (the carried inputs are its own successes).
- **Within one radius**, as a suite asks with ``cascade: true`` (for every attack) or per attack
  ``cascade: true | [names]``:

  - ``true``: the attack runs after every earlier attack of the suite (file order; each attack
    followed by its budget copies) with the same family, budget, ball (radius, or RT limits)
    **and kind**. Keeping the
    kinds apart keeps the gradient-masking test exact: it compares the union of a family's
    first-order attacks with the union of its other attacks, and a cascade leaves every such
    union unchanged.
  - ``[names]``: after exactly these earlier attacks (same family, budget and ball; any kind: a
    cross-kind cascade makes the masking test count the skipped inputs as fooled by both kinds).
  - ``false`` (or absent without a suite-level ``cascade: true``): no within-radius cascade.

Rows stay complete. An input that is already not robust after the earlier attacks (fooled by
one of them, or misclassified clean) is not attacked; its row records it as fooled
(``fooled = True``, ``robust = False``) with the breaking attack's ``adv_pred``, ``perturbation``
(converted to this attack's measure where it is a fraction of the budget: rt, affine) and
``loss``, and ``broken_by`` names what broke it: ``"clean"``, or what the earlier row names (the
attack whose perturbation the row holds: the earlier attack itself, an attack before it, or an
AutoAttack component), except that an earlier copy at a smaller radius is named by its own name
where its own run broke the input. The shard file's metadata holds the same record (``mpo.shard``
-> ``cascade``: ``{"after": [names], "broken_by": {index: name}}``; ``jobs.results.read_cascade``).
So a cascaded attack's rows give the cumulative verdict of its cascade, and the family verdict
(robust to every attack of the family) is the same as running every attack on every input, up to
the randomness of the attacks (a random attack run on fewer inputs draws other random numbers).

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
#: The ``example`` of a row the cascade skipped: an earlier attack broke the input.
EARLIER = "earlier"

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
    """Set ``after`` on each suite attack (copies are returned): its smaller-radius copy
    (``below``, wherever it is listed) first, then the earlier attacks of its radius that its
    request names.

    attacks: the expanded suite attacks in suite order (each attack followed by its budget
    copies). requests: base attack name -> (its position in the file as the error location
    ``attacks[i].cascade``, its ``cascade`` field).
    """
    out: list[SuiteAttack] = []
    by_name = {a.name: a for a in attacks}
    sigs = [(ball_signature(a), a.kind) for a in attacks]
    for pos, attack in enumerate(attacks):
        where, own = requests.get(attack.base, ("", None))
        request = default if own is None else own
        earlier = attacks[:pos]
        if request is False:
            within: tuple[str, ...] = ()
        elif request is True:
            within = tuple(a.name for a, sig in zip(earlier, sigs[:pos], strict=True)
                           if sig == sigs[pos])
        else:
            same_point = {(a.base, round(a.budget, 12)): a.name for a in earlier}
            names = []
            for n in request:
                name = same_point.get((n, round(attack.budget, 12)))
                if name is None:
                    shown = n if attack.budget == 1.0 else f"{n} at budget {attack.budget:g}"
                    raise fail(where, f"{shown!r} is not an attack listed before {attack.name!r}")
                if ball_signature(by_name[name]) != ball_signature(attack):
                    raise fail(
                        where, f"{name!r} has another family, budget or ball than {attack.name!r}; "
                        "a cascade runs within one family ball",
                    )
                names.append(name)
            within = tuple(dict.fromkeys(names))
        below = (attack.below,) if attack.below is not None and own is not False else ()
        out.append(dataclasses.replace(attack, after=below + within))
    return out


@dataclass(frozen=True)
class Earlier:
    """An earlier attack of a cascade, as the prior reads it: its rows for the shard's n inputs
    (index order), the ``broken_by`` values of its own run, and the factor that converts its
    perturbation sizes into the later attack's measure (1 for l_p radii, which are absolute; the
    ratio of the budgets for sizes that are fractions of the budget: rt, affine)."""

    name: str
    rows: pd.DataFrame
    own_labels: tuple[str, ...]
    smaller_radius: bool = False
    size_factor: float = 1.0

    def label(self, by: str) -> str:
        """What the later attack's row names for an input this attack's row says ``by`` broke:
        a smaller-radius copy is named itself where its own run broke the input."""
        if self.smaller_radius and by in self.own_labels:
            return self.name
        return by or self.name


def earlier_of(attack: SuiteAttack, earlier: SuiteAttack, rows: pd.DataFrame) -> Earlier:
    """``earlier`` (one of ``attack.after``) with its rows, for ``prior_from_rows``."""
    smaller = earlier.name == attack.below
    fraction = math.isnan(attack.ball().epsilon)
    return Earlier(earlier.name, rows, earlier.own_labels(), smaller_radius=smaller,
                   size_factor=earlier.budget / attack.budget if smaller and fraction else 1.0)


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


def prior_from_rows(frames: Sequence[Earlier], n: int) -> CascadePrior:
    """The cascade state after the earlier attacks, from their shard rows.

    frames: the earlier attacks with their n rows, in cascade order. An input not robust to some
    earlier attack is skipped; its values come from the first earlier attack that left it not
    robust (``CLEAN`` when it is misclassified clean).
    """
    skip = [False] * n
    broken: list[str | None] = [None] * n
    adv_pred, size, loss = [0] * n, [math.nan] * n, [math.nan] * n
    for frame in frames:
        df = frame.rows
        if len(df) != n:
            raise ValueError(f"cascade: attack {frame.name!r} has {len(df)} rows for a shard of {n}")
        robust = df["robust"].tolist()
        clean = df["clean_correct"].tolist()
        by = df["broken_by"].tolist()
        preds, sizes, losses = df["adv_pred"].tolist(), df["perturbation"].tolist(), df["loss"].tolist()
        for i in range(n):
            if skip[i] or robust[i]:
                continue
            skip[i] = True
            broken[i] = frame.label(by[i]) if clean[i] else CLEAN
            adv_pred[i], loss[i] = int(preds[i]), float(losses[i])
            size[i] = float(sizes[i]) * frame.size_factor
    return CascadePrior(skip=skip, broken_by=broken, adv_pred=adv_pred, perturbation=size, loss=loss)


def chain_key(key: str, after_keys: Sequence[str]) -> str:
    """A cascaded shard's content key: its own and those of the shards it depends on."""
    if not after_keys:
        return key
    body = json.dumps({"key": key, "after": list(after_keys)})
    return hashlib.sha256(body.encode()).hexdigest()
