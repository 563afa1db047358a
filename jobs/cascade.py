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
``cascade``: ``{"after": [names], "broken_by": {index: name or "clean"}}``; ``read_cascade``).
So a cascaded attack's rows give the cumulative verdict of the cascade up to it, and the family
verdict (robust to every attack of the family) is the same as running every attack on every
input, up to the randomness of the attacks (a random attack run on fewer inputs draws other
random numbers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: ``broken_by`` value of an input misclassified without any attack.
CLEAN = "clean"


def ball_signature(attack: Any) -> tuple[Any, ...]:
    """What must match for two suite attacks to share a cascade: the family, the budget and the
    ball of the in-ball rule (l_p radius; RT limits; the affine sub-balls)."""
    spec = attack.spec
    if attack.family in ("linf", "l2", "l1"):
        radius = attack.epsilon if attack.epsilon is not None else float(spec["epsilon"])
        ball: Any = round(float(radius), 12)
    elif spec.get("type") == "rt":
        ball = tuple(float(v) for v in spec["spatial_limits"])
    else:
        ball = json.dumps(spec.get("attacks"), sort_keys=True)
    return (attack.family, round(float(attack.budget), 12), ball)


def resolve_cascades(
    attacks: Sequence[Any],
    requests: Mapping[str, Any],
    *,
    default: bool,
    fail: Callable[[str, str], Exception],
) -> list[Any]:
    """Set ``after`` on each suite attack (a ``SuiteAttack``; copies are returned).

    attacks: the expanded suite attacks in file order (budget copies named ``name@b`` follow
    their attack). requests: base attack name -> its ``cascade`` field (None, bool or list of
    names) with its position in the file as the error location ``attacks[i].cascade``.
    """
    out: list[Any] = []
    by_name = {a.name: a for a in attacks}
    for pos, attack in enumerate(attacks):
        base, _, frac = attack.name.partition("@")
        where, request = requests.get(base, (None, None))
        request = default if request is None else request
        earlier = attacks[:pos]
        if request is False:
            after: tuple[str, ...] = ()
        elif request is True:
            sig = ball_signature(attack)
            after = tuple(
                a.name for a in earlier if ball_signature(a) == sig and a.kind == attack.kind
            )
        elif isinstance(request, list) and all(isinstance(n, str) for n in request) and request:
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
        else:
            raise fail(where, f"{request!r}: must be true, false or a non-empty list of "
                              "earlier attack names")
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

    def broken_map(self, start: int) -> dict[str, str]:
        return {str(start + i): b for i, b in enumerate(self.broken_by) if b is not None}


def prior_from_rows(frames: Sequence[tuple[str, Any]], n: int) -> CascadePrior:
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
        fooled = df["fooled"].tolist()
        preds, sizes, losses = df["adv_pred"].tolist(), df["perturbation"].tolist(), df["loss"].tolist()
        for i in range(n):
            if skip[i] or robust[i]:
                continue
            skip[i] = True
            broken[i] = name if (clean[i] and fooled[i]) else CLEAN
            adv_pred[i], size[i], loss[i] = int(preds[i]), float(sizes[i]), float(losses[i])
    return CascadePrior(skip=skip, broken_by=broken, adv_pred=adv_pred, perturbation=size, loss=loss)


def chain_key(key: str, after_keys: Sequence[str]) -> str:
    """A cascaded shard's content key: its own and those of the shards it depends on."""
    if not after_keys:
        return key
    body = json.dumps({"key": key, "after": list(after_keys)})
    return hashlib.sha256(body.encode()).hexdigest()


def read_cascade(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A results file's cascade record ``{"after": [...], "broken_by": {index: name}}`` with
    integer indices, or None for a shard that was not cascaded."""
    import pyarrow.parquet as pq

    from jobs.schema import META_SHARD

    meta = pq.read_schema(path).metadata or {}
    shard = json.loads(meta.get(META_SHARD, b"{}").decode())
    record = shard.get("cascade")
    if not record:
        return None
    return {"after": list(record["after"]),
            "broken_by": {int(k): v for k, v in record["broken_by"].items()}}


def attack_cascaded(
    model: Any, device: Any, attack_obj: Any, entry: Any, x: Any, y: Any, seed: int,
    batch_size: int, prior: CascadePrior, in_ball: Callable[..., Any],
) -> dict[str, list[Any]]:
    """``jobs.evaluation``'s per-shard columns with the attack run only where ``prior`` does not
    skip: x [n, ...], y [n] on the CPU; ``in_ball(attack, entry, x, result)`` is the evaluation's
    in-ball rule. Returns lists: clean_pred, adv_pred, fooled, size, loss, and epsilon [1]."""
    import torch
    import torch.nn.functional as F

    n = len(x)
    skip = torch.tensor(prior.skip, dtype=torch.bool)
    adv_pred = torch.tensor(prior.adv_pred, dtype=torch.long)
    fooled = skip.clone()
    size = torch.tensor(prior.perturbation, dtype=torch.float64)
    loss = torch.tensor(prior.loss, dtype=torch.float64)
    clean_pred = torch.empty(n, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        for i in range(0, n, batch_size):
            clean_pred[i : i + batch_size] = model(x[i : i + batch_size].to(device)).argmax(1).cpu()
    gen = torch.Generator(device=device).manual_seed(seed)
    todo = (~skip).nonzero().squeeze(1)
    for i in range(0, len(todo), batch_size):
        idx = todo[i : i + batch_size]
        xb, yb = x[idx].to(device), y[idx].to(device)
        result = attack_obj(model, xb, yb, generator=gen)
        model.eval()
        with torch.no_grad():
            logits = model(result.x_adv.detach())
        pred = logits.argmax(1)
        s, inside, _ = in_ball(attack_obj, entry, xb, result)
        adv_pred[idx] = pred.cpu()
        fooled[idx] = ((pred != yb) & inside).cpu()
        size[idx] = s.detach().double().cpu()
        loss[idx] = F.cross_entropy(logits, yb, reduction="none").double().cpu()
    if entry.family in ("linf", "l2", "l1"):
        eps = entry.epsilon if entry.epsilon is not None else float(attack_obj.epsilon)
    else:
        eps = math.nan
    return {
        "clean_pred": clean_pred.tolist(),
        "adv_pred": adv_pred.tolist(),
        "fooled": fooled.tolist(),
        "size": size.tolist(),
        "loss": loss.tolist(),
        "epsilon": [eps],
    }
