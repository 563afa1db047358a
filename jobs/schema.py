"""The per-example results table: one row per (model, attack, test input).

Defined once here, with a version. Written by ``jobs.evaluation``; read by ``jobs.results`` and
``analysis``.
This module imports only pyarrow (no torch), so the analysis can use it without torch.

Rows with ``budget == 1.0`` are the evaluation at the family's full budget (the tables);
rows with other budgets are the radius sweep of Figure 1 and the robustness curves (a budget may
be > 1.0 when a suite's radius range goes beyond the full budget).

File metadata (bytes keys, JSON values):
- ``mpo.schema_version``: ``SCHEMA_VERSION`` as a string.
- ``mpo.model``: ``model_id``, ``label``, ``checkpoint_digest`` and ``config``: the model's
  training config snapshot, or for a model mpo did not train (``jobs.external``) its config-like
  record (``strategy: external``, ``external: {kind, source, weights_digest, spec}``); with
  ``train_cost`` (the checkpoint's ``jobs.train_cost.training_cost`` record) when it has one.
- ``mpo.suite``: the evaluation suite snapshot, including ``groups`` ({group: [families]}),
  ``budgets_protocol`` ("full" or "reduced"), ``radii`` ({family: [radii]}), ``full_radius``
  ({l_p family: epsilon}) and, per attack, ``base`` (the full-budget attack it is a copy of).
- ``mpo.shard``: {"attack", "start", "stop", "content_key"}, and for a cascaded attack
  ``"cascade": {"after": [names], "broken_by": {index: name or "clean"}}`` (``jobs.cascade``).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from jobs.errors import MpoError
from jobs.strategy_table import STRATEGIES

SCHEMA_VERSION = 3
#: The versions this mpo reads: 2 had no ``example`` column (read as ""); 3 added it.
READABLE_VERSIONS = (2, 3)
#: Columns added after version 2, with the value a file of an older version is read with.
ADDED_COLUMNS: dict[str, tuple[int, object]] = {"example": (3, "")}

META_SCHEMA_VERSION = b"mpo.schema_version"
META_MODEL = b"mpo.model"
META_SUITE = b"mpo.suite"
META_SHARD = b"mpo.shard"

#: Column name -> (arrow type, description).
COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "model_id": (pa.string(), "unique id of the model: a hash of its training config, or of an "
                 "external model's source, weights digest and input wrapper"),
    "model_label": (pa.string(), "display name, e.g. 'Adv_max'"),
    "dataset": (pa.string(), "dataset name: toy, mnist, cifar10"),
    "strategy": (pa.string(), f"training strategy ({', '.join(STRATEGIES)}), or external for a "
                 "model mpo did not train"),
    "train_attacks": (pa.string(), "JSON list of the training attacks' families"),
    "groups": (pa.string(), "JSON list of the groups this model is reported in"),
    "seed": (pa.int64(), "training seed (null for an external model)"),
    "checkpoint_digest": (pa.string(), "sha256 of the checkpoint file evaluated (an external "
                          "model's weights or TorchScript file; '' for a factory without weights)"),
    "suite": (pa.string(), "evaluation suite name"),
    "attack": (pa.string(), "attack name inside the suite"),
    "family": (pa.string(), "perturbation family: linf, l1, l2, rt, or affine like linf+rt"),
    "kind": (pa.string(), "first-order, gradient-free, grid or exact"),
    "epsilon": (pa.float64(), "radius of the family ball the in-ball rule used (NaN for rt)"),
    "budget": (pa.float64(), "fraction of the family's full budget (1.0 = full; may be > 1)"),
    "attack_spec": (pa.string(), "the attack's full spec as JSON"),
    "eval_seed": (pa.int64(), "seed of the attack's random generator for this shard"),
    "index": (pa.int64(), "index of the test input (the first N test points)"),
    "label": (pa.int64(), "true label"),
    "clean_pred": (pa.int64(), "prediction on the clean input"),
    "adv_pred": (pa.int64(), "prediction on the adversarial input"),
    "clean_correct": (pa.bool_(), "clean_pred == label"),
    "fooled": (pa.bool_(), "the attack found a misclassified input inside the family ball"),
    "robust": (pa.bool_(), "clean-correct and not fooled"),
    "broken_by": (
        pa.string(),
        "for a non-robust row, what broke the input: 'clean' (misclassified clean), else the suite "
        "attack that fooled it (a cascade's earlier attack; a larger radius's smaller-radius copy), "
        "or an AutoAttack ensemble's component: apgd-ce, apgd-t, fab-t, square; '' for robust rows",
    ),
    "example": (
        pa.string(),
        "what the row's adversarial example is: 'first-fooled' (the attack stopped the input at "
        "its first fooling candidate), 'best' (the best candidate of the attack's whole run: a "
        "misclassified one wins, else the highest cross-entropy), 'smallest' (a minimum-norm "
        "attack's smallest perturbation), 'library' (the attack library's own choice), 'clean' (a "
        "library attack that found nothing returns the clean input), 'worst-case' (an exact attack's "
        "largest margin in the ball: on an affine model, nothing in the ball fools a robust row), 'earlier' (not attacked: an earlier attack of the cascade broke the input, broken_by names it); "
        "'' in files of schema version 2",
    ),
    "perturbation": (pa.float64(), "size of the perturbation in the family's norm"),
    "loss": (pa.float64(), "cross-entropy at the adversarial input"),
    "shard_start": (pa.int64(), "first test index of the shard"),
    "shard_stop": (pa.int64(), "one past the last test index of the shard"),
    "shard_seconds": (pa.float64(), "wall time of the shard"),
}

SCHEMA = pa.schema([pa.field(name, typ) for name, (typ, _) in COLUMNS.items()])


class SchemaVersionError(MpoError, ValueError):
    """A results file of another schema version."""


def make_metadata(*, model: dict[str, Any], suite: dict[str, Any], shard: dict[str, Any]) -> dict[bytes, bytes]:
    return {
        META_SCHEMA_VERSION: str(SCHEMA_VERSION).encode(),
        META_MODEL: json.dumps(model, sort_keys=True).encode(),
        META_SUITE: json.dumps(suite, sort_keys=True).encode(),
        META_SHARD: json.dumps(shard, sort_keys=True).encode(),
    }


def check_schema_version(metadata: dict[bytes, bytes] | None, *, path: str) -> int:
    """Return the file's schema version; raise SchemaVersionError if it is not ours."""
    raw = (metadata or {}).get(META_SCHEMA_VERSION)
    if raw is None:
        raise SchemaVersionError(
            f"{path}: not an mpo results file (no '{META_SCHEMA_VERSION.decode()}' metadata)"
        )
    version = int(raw.decode())
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise SchemaVersionError(
            f"{path}: results schema version {version}, this mpo reads versions {readable}; "
            "re-run the evaluation with this version of mpo or read it with the mpo that wrote it"
        )
    return version


def upgrade(table: pa.Table) -> pa.Table:
    """A table of an older readable version with the columns added since (``ADDED_COLUMNS``),
    filled with their old-version value, in ``COLUMNS`` order."""
    for name, (_, fill) in ADDED_COLUMNS.items():
        if name not in table.column_names:
            typ = COLUMNS[name][0]
            table = table.append_column(pa.field(name, typ), pa.array([fill] * table.num_rows, typ))
    return table.select([n for n in COLUMNS if n in table.column_names])
