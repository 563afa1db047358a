"""Model soups (Croce, Rebuffi, Shelhamer & Gowal, CVPR 2023): the weighted average of the weights
of models of one architecture, evaluated as a model of its own.

``soup_weights(k, points)`` gives the weight vectors along the line (two ingredients) or the
simplex (more) at ``points`` steps per edge, the ingredients themselves (the vertices) left out:
they are evaluated as models of their own and sit at the ends of the curve.

``make_soup`` writes the soup as an mpo checkpoint: the first ingredient's config (for the
architecture) and, in ``extra``, ``soup`` (its record: ingredients, their labels, the weights,
``model_id``) and its ``cost`` (its ingredients' lineages, each ancestor once: a soup trains
nothing of its own). ``mpo eval`` and the sweep's evaluation read it as any checkpoint, under
the soup's own model id.

Every floating tensor of the state dict is averaged, the BatchNorm running means and variances
included, in float64 and cast back: with weights (1, 0, ...) the soup's tensors are the first
ingredient's exactly. BatchNorm statistics are averaged, not recomputed, because the ingredients
are fine-tuned from one parent (what makes their weights averageable at all) and their
statistics are close; recomputing them would need a choice of inputs (clean, or one threat
model's adversarial inputs) that would pull the soup towards that threat model, and a pass over
training data that an evaluation-only model does not otherwise need. Integer buffers
(``num_batches_tracked``) are taken from the heaviest ingredient.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jobs.errors import ConfigError

SOUP_STRATEGY = "soup"


def soup_weights(k: int, points: int) -> list[tuple[float, ...]]:
    """The weight vectors of ``k`` ingredients at ``points`` steps per edge (``points - 1``
    intervals), the vertices (an ingredient alone) left out; first ingredient's weight first,
    falling."""
    if k < 2 or points < 3:
        raise ConfigError(f"soup: {k} ingredients at {points} points per edge gives no mixture; "
                          "need at least 2 ingredients and 3 points")
    n = points - 1
    out = []
    for parts in itertools.product(range(n, -1, -1), repeat=k):
        if sum(parts) == n and max(parts) < n:
            out.append(tuple(round(p / n, 12) for p in parts))
    return out


def check_weights(weights: Sequence[float], k: int, *, source: str) -> tuple[float, ...]:
    """``weights``: ``k`` non-negative numbers summing to 1 (within 1e-6)."""
    w = tuple(float(x) for x in weights)
    if len(w) != k or any(x < 0 for x in w) or abs(sum(w) - 1.0) > 1e-6:
        raise ConfigError(f"{source}: weights {list(weights)}: need {k} non-negative weights (one "
                          "per ingredient) that sum to 1")
    return w


def soup_id(dataset: str, ingredients: Sequence[str], weights: Sequence[float]) -> str:
    """``<dataset>-soup-<hash8>`` of the ingredients' model ids and the weights."""
    body = json.dumps({"ingredients": list(ingredients), "weights": [float(w) for w in weights]},
                      sort_keys=True)
    return f"{dataset}-{SOUP_STRATEGY}-{hashlib.sha256(body.encode()).hexdigest()[:8]}"


def soup_label(family: str, weights: Sequence[float]) -> str:
    return f"{family}({','.join(f'{w:g}' for w in weights)})"


def soup_record(*, family: str, ingredients: Sequence[str], labels: Sequence[str],
                weights: Sequence[float], config: Mapping[str, Any]) -> dict[str, Any]:
    """The soup's config-like record (results metadata, manifest): the keys readers use, from
    the first ingredient's config, and ``soup``."""
    dataset = dict(config.get("dataset") or {})
    return {
        "label": soup_label(family, weights),
        "strategy": SOUP_STRATEGY,
        "dataset": dataset,
        "model": dict(config.get("model") or {}),
        "attacks": [],
        "epochs": 0,
        "seed": config.get("seed"),
        "soup": {"family": family, "ingredients": list(ingredients), "labels": list(labels),
                 "weights": [float(w) for w in weights],
                 "model_id": soup_id(str(dataset.get("name")), ingredients, weights)},
    }


def average(states: Sequence[Mapping[str, Any]], weights: Sequence[float], *,
            names: Sequence[str]) -> dict[str, Any]:
    """The weighted average of state dicts of one architecture (see the module's docstring)."""
    import torch

    keys = list(states[0])
    for name, state in zip(names[1:], states[1:], strict=True):
        if list(state) != keys or any(state[k].shape != states[0][k].shape for k in keys):
            diff = sorted(set(state) ^ set(keys)) or [k for k in keys
                                                      if state[k].shape != states[0][k].shape]
            raise ConfigError(f"soup: ingredient {name} has another architecture than {names[0]} "
                              f"(tensors differ: {', '.join(diff[:5])})")
    heaviest = max(range(len(weights)), key=lambda i: weights[i])
    out: dict[str, Any] = {}
    for k in keys:
        ref = states[0][k]
        if not torch.is_floating_point(ref):
            out[k] = states[heaviest][k].clone()
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for w, state in zip(weights, states, strict=True):
            acc += float(w) * state[k].to(torch.float64)
        out[k] = acc.to(ref.dtype)
    return out


def soup_cost(costs: Sequence[Mapping[str, Any]], ingredients: Sequence[str]) -> dict[str, Any]:
    """A soup's cost: nothing of its own; its ingredients' lineages, each ancestor once."""
    from jobs.finetune import lineage_of, total

    lineage: dict[str, dict[str, float]] = {}
    for cost, mid in zip(costs, ingredients, strict=True):
        lineage.update(lineage_of(cost, mid))
    own = {"fwd_per_example": 0.0, "bwd_per_example": 0.0, "train_seconds": 0.0, "examples": 0}
    return {**own, "lineage": lineage, "with_ancestors": total(lineage)}


def make_soup(checkpoints: Sequence[str | Path], weights: Sequence[float], out: str | Path, *,
              family: str, labels: Sequence[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """Average the checkpoints' weights into ``out`` (an mpo checkpoint); returns (path, the
    soup's record). Refuses ingredients of different datasets or architectures."""
    from jobs.checkpoint import load_checkpoint, save_checkpoint
    from jobs.config import make_train_config

    if len(checkpoints) < 2:
        raise ConfigError("soup: give at least two ingredients")
    w = check_weights(weights, len(checkpoints), source=f"soup {family}")
    payloads = [load_checkpoint(p) for p in checkpoints]
    configs = [make_train_config(p["config"], source=f"{c} (embedded config)")
               for p, c in zip(payloads, checkpoints, strict=True)]
    ids = [str((p["extra"] or {}).get("soup", {}).get("model_id") or c.model_id())
           for p, c in zip(payloads, configs, strict=True)]
    names = list(labels) if labels else [c.label or i for c, i in zip(configs, ids, strict=True)]
    first = configs[0]
    for name, c in zip(names[1:], configs[1:], strict=True):
        if (c.dataset, c.model) != (first.dataset, first.model):
            raise ConfigError(f"soup {family}: ingredient {name} is a '{c.model.name}' on "
                              f"'{c.dataset.name}', {names[0]} a '{first.model.name}' on "
                              f"'{first.dataset.name}': a soup needs one architecture")
    state = average([p["state_dict"] for p in payloads], w, names=names)
    record = soup_record(family=family, ingredients=ids, labels=names, weights=w,
                         config=first.to_dict())
    costs = [dict((p["extra"] or {}).get("cost") or {}) for p in payloads]
    path = save_checkpoint(out, model=state, config={**first.to_dict(), "label": record["label"]},
                           extra={"soup": record, "model_id": record["soup"]["model_id"],
                                  "label": record["label"], "cost": soup_cost(costs, ids)})
    return Path(path), record
