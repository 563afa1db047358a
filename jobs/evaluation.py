"""Per-example evaluation of a model against an attack suite, written to parquet.

The model is an mpo checkpoint or an external model (``jobs.external``: a PyTorch factory, a
TorchScript file, a RobustBench zoo entry); ``load_model`` loads either into a ``LoadedModel``.

One shard is one attack of a suite (``jobs.suite``) on test points ``[start, stop)``. The one
evaluation loop (``attack_inputs``) runs the attack in batches and applies the in-ball rule of the
attack's ball (``jobs.attacks.norms``): a result counts as fooling the model only if its
perturbation lies inside the family's ball, measured here and not trusted from the attack. A
cascaded attack (``jobs.cascade``: a copy after its smaller-radius copy, and within a radius as
the suite asks) runs through the same loop with a mask: the inputs the earlier attacks already
broke are not attacked and keep their values. A minimum-norm attack's copy at a larger radius is
not run at all (``threshold_rows``): it counts its smaller copy's perturbations against its own
radius. Each row's ``broken_by`` names what broke a non-robust input (``jobs.schema``).

Files
-----
``out_dir/results/<model_id>/<attack>__<start>-<stop>.parquet``, one row per test input, columns
and metadata per ``jobs.schema``. Written to a temporary name and renamed, so a killed process
never leaves a partial ``.parquet``. Each file's metadata holds a content key (checkpoint digest
or an external model's identity, attack spec, radius, shard, seed, label, groups, schema
version): a shard whose file already has that key is not recomputed. Reading them back: ``jobs.results``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import jobs.attacks
from jobs.attacks import Attack
from jobs.attacks.balls import Ball
from jobs.cascade import (
    CLEAN,
    EARLIER,
    CascadePrior,
    Earlier,
    chain_key,
    earlier_of,
    prior_from_rows,
)
from jobs.data import dataset_info, load_split
from jobs.external import ExternalModel
from jobs.external.load import load_external
from jobs.io import atomic_write, file_digest
from jobs.results import existing_content_key, read_results
from jobs.run_folder import RunFolder, ShardEntry, plan_shards
from jobs.schema import COLUMNS, SCHEMA, SCHEMA_VERSION, make_metadata
from jobs.suite import (
    ConfigError,
    EvalSuite,
    SuiteAttack,
    check_compatible,
    load_suite,
    toy_identity,
)
from jobs.training import load_trained, resolve_device

# ----------------------------------------------------------------------------------------------
# Shards


def shard_path(out_dir: str | os.PathLike[str], model_id: str, attack: str, start: int, stop: int) -> Path:
    """Where the shard of ``attack`` on test points [start, stop) of a model is written."""
    return RunFolder(Path(out_dir)).shard_path(ShardEntry(model_id, attack, start, stop))


def shard_seed(suite: EvalSuite, attack: str, start: int) -> int:
    """The seed of a shard's attack generator: a function of the suite seed, attack and shard."""
    digest = hashlib.sha256(f"{suite.seed}:{attack}:{start}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded for evaluation: on its device, with what its rows and metadata record.

    Made by ``load_model`` from an mpo checkpoint or an external model (``jobs.external``)."""

    model: nn.Module
    model_id: str
    device: torch.device
    #: the config snapshot of ``mpo.model``: the training config, or the external model's
    #: config-like record (``strategy: external``)
    record: dict[str, Any]
    #: the ``checkpoint_digest`` column: sha256 of the checkpoint or weights file ('' if none)
    digest: str
    #: what a shard's content key holds for the model: the checkpoint's digest, or a hash of
    #: everything an external model's outputs depend on
    identity: str
    train_families: list[str]
    seed: int | None
    bounds: tuple[float, float] | None
    #: the checkpoint's training cost record (``jobs.train_cost.training_cost``), if it has one
    train_cost: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return str(self.record.get("label") or "")


#: What ``evaluate`` and ``evaluate_shard`` take: a checkpoint path, an external model's spec,
#: or a model ``load_model`` already loaded.
ModelSource = str | os.PathLike[str] | ExternalModel | LoadedModel


def load_model(source: ModelSource, suite: EvalSuite, device: str | torch.device | None, *,
               label: str | None = None, download: bool = False) -> LoadedModel:
    """Load a checkpoint (``checkpoint.pt``) or an external model for ``suite``; refuse one of
    another dataset. ``label`` names an external model (default: its factory or file name);
    ``download`` lets RobustBench fetch a checkpoint its model folder lacks."""
    if isinstance(source, LoadedModel):
        return source
    dev = resolve_device(device)
    if isinstance(source, ExternalModel):
        if source.dataset != suite.dataset:
            raise ConfigError(
                f"{source.kind} model {source.source} is for dataset '{source.dataset}' but "
                f"suite '{suite.name}' evaluates '{suite.dataset}'"
            )
        ext = load_external(source, device=dev, label=label, download=download)
        return LoadedModel(ext.module, ext.model_id, dev, ext.record, ext.weights_digest,
                           ext.identity, [], None, dataset_info(source.dataset).bounds)
    path = Path(source)
    model, config, payload = load_trained(path, device=dev)
    check_compatible(config, suite, source=f"checkpoint {path}")
    extra = payload.get("extra") or {}
    cost = extra.get("train_cost") or extra.get("cost")
    digest = file_digest(path)
    soup = extra.get("soup")
    if soup:  # a model soup (jobs.soup): its own id and record; no training attacks
        return LoadedModel(model, str(soup["soup"]["model_id"]), dev, dict(soup), digest, digest,
                           [], config.seed, config.dataset_info().bounds,
                           dict(cost) if cost else None)
    return LoadedModel(model, config.model_id(), dev, config.to_dict(), digest, digest,
                       config.families(), config.seed, config.dataset_info().bounds,
                       dict(cost) if cost else None)


@dataclass(frozen=True)
class _Options:
    """What every shard of one ``evaluate`` / ``evaluate_shard`` call shares."""

    out_dir: str | os.PathLike[str]
    data_dir: str | os.PathLike[str] | None
    download: bool
    model_label: str | None
    groups: Sequence[str] | None
    batch_size: int


@dataclass(frozen=True)
class _Shard:
    """One attack of a suite on test points [start, stop) of one model, as its rows record it."""

    loaded: LoadedModel
    suite: EvalSuite
    attack: SuiteAttack
    start: int
    stop: int
    label: str
    groups: list[str]

    @property
    def seed(self) -> int:
        return shard_seed(self.suite, self.attack.name, self.start)

    def of(self, attack: str) -> _Shard:
        """The same shard of another attack of the suite."""
        return dataclasses.replace(self, attack=self.suite.attack(attack))

    def content_key(self) -> str:
        """The key of what the shard's file holds; a cascaded shard's is chained with those of
        the shards it depends on."""
        body = {
            "schema_version": SCHEMA_VERSION,
            "checkpoint_digest": self.loaded.identity,
            "suite": self.suite.name,
            "dataset_params": (toy_identity(self.suite.dataset_params)
                               if self.suite.dataset == "toy" else {}),
            "attack": self.attack.to_dict(),
            "start": self.start,
            "stop": self.stop,
            "eval_seed": self.seed,
            "label": self.label,
            "groups": self.groups,
        }
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return chain_key(key, [self.of(a).content_key() for a in self.depends_on()])

    def depends_on(self) -> tuple[str, ...]:
        """The attacks whose shards this one reads: its cascade's, and the smaller-radius copy
        whose perturbations a thresholded (minimum-norm) copy counts."""
        a = self.attack
        if a.thresholds and a.below is not None and a.below not in a.after:
            return (*a.after, a.below)
        return a.after


def _shard(loaded: LoadedModel, suite: EvalSuite, attack: str, start: int, stop: int,
           opts: _Options) -> _Shard:
    """The shard of ``attack`` on [start, stop), labelled and grouped as ``opts`` say."""
    entry = suite.attack(attack)
    if not 0 <= start < stop:
        raise ValueError(f"shard [{start}, {stop}): need 0 <= start < stop")
    label = opts.model_label or loaded.label or loaded.model_id
    groups = list(opts.groups) if opts.groups is not None else list(suite.groups)
    return _Shard(loaded, suite, entry, start, stop, label, groups)


# ----------------------------------------------------------------------------------------------
# The evaluation loop


@dataclass(frozen=True)
class AttackedInputs:
    """The outcome of one attack on n inputs ([n] lists, in input order)."""

    clean_pred: list[int]
    adv_pred: list[int]
    fooled: list[bool]
    size: list[float]
    loss: list[float]
    #: what broke each input where the attack's own name does not say it: the prior's record
    #: for a skipped input, the component of an ensemble (AutoAttack's standard version)
    breaker: list[str | None]
    #: what each row's example is (``jobs.attacks.base.Attack.example``; ``EARLIER``: skipped)
    example: list[str]


def attack_inputs(
    model: nn.Module, device: torch.device, attack: Attack, ball: Ball, x: Tensor, y: Tensor, *,
    seed: int, batch_size: int, prior: CascadePrior,
) -> AttackedInputs:
    """Attack the inputs ``prior`` does not skip, ``batch_size`` at a time, with one generator
    seeded ``seed``; a result fools the model where it is misclassified inside ``ball``.

    x [n, ...], y [n] on the CPU. Skipped inputs keep the prior's values (fooled, with the
    breaking attack's prediction, size and loss); ``CascadePrior.attack_all(n)`` skips none.
    """
    skip = torch.tensor(prior.skip, dtype=torch.bool)
    adv_pred = torch.tensor(prior.adv_pred, dtype=torch.long)
    fooled = skip.clone()
    size = torch.tensor(prior.perturbation, dtype=torch.float64)
    loss = torch.tensor(prior.loss, dtype=torch.float64)
    clean_pred = torch.empty(len(x), dtype=torch.long)
    breaker = list(prior.broken_by)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            clean_pred[i : i + batch_size] = model(x[i : i + batch_size].to(device)).argmax(1).cpu()
    gen = torch.Generator(device=device).manual_seed(seed)
    todo = (~skip).nonzero().squeeze(1)
    for i in range(0, len(todo), batch_size):
        idx = todo[i : i + batch_size]
        xb, yb = x[idx].to(device), y[idx].to(device)
        result = attack(model, xb, yb, generator=gen)
        with torch.no_grad():
            logits = model(result.x_adv.detach())
        pred = logits.argmax(1)
        s, inside = ball.contains(xb, result)
        adv_pred[idx] = pred.cpu()
        fooled[idx] = ((pred != yb) & inside).cpu()
        if result.component is not None:  # an ensemble: name the component
            for i, component, hit in zip(idx.tolist(), result.component, fooled[idx].tolist(),
                                         strict=True):
                breaker[i] = component if hit else None
        size[idx] = s.detach().double().cpu()
        loss[idx] = F.cross_entropy(logits, yb, reduction="none").double().cpu()
    example = [EARLIER if s else attack.example(f)
               for s, f in zip(skip.tolist(), fooled.tolist(), strict=True)]
    return AttackedInputs(clean_pred.tolist(), adv_pred.tolist(), fooled.tolist(), size.tolist(),
                          loss.tolist(), breaker, example)


def threshold_rows(below: pd.DataFrame, ball: Ball, prior: CascadePrior) -> AttackedInputs:
    """A minimum-norm attack at a larger radius, without running it: its search does not depend
    on the radius, so the perturbations its copy at the smaller radius found (``below``: that
    copy's n rows in index order) are counted against this ``ball``'s l_p radius. Inputs the
    prior skips keep its values; every other input's row in ``below`` is robust there, so it
    holds the attack's own result for that input."""
    limit = ball.limit()
    adv_pred, size, loss = below["adv_pred"].tolist(), below["perturbation"].tolist(), below["loss"].tolist()
    labels, example = below["label"].tolist(), below["example"].tolist()
    fooled = []
    for i, skip in enumerate(prior.skip):
        if skip:
            adv_pred[i], size[i], loss[i] = prior.adv_pred[i], prior.perturbation[i], prior.loss[i]
            example[i] = EARLIER
        fooled.append(skip or (adv_pred[i] != labels[i] and size[i] <= limit))
    return AttackedInputs(below["clean_pred"].tolist(), adv_pred, fooled, size, loss,
                          list(prior.broken_by), example)


# ----------------------------------------------------------------------------------------------
# One shard


def _test_points(suite: EvalSuite, n: int, opts: _Options) -> tuple[Tensor, Tensor]:
    """The suite's first n test points (toy: drawn from the suite's own parameters)."""
    return load_split(suite.dataset, "test", data_dir=opts.data_dir, download=opts.download, n=n,
                      seed=suite.seed, params=suite.test_params())


def _earlier(shard: _Shard, opts: _Options, data: tuple[Tensor, Tensor]) -> dict[str, Earlier]:
    """The shards this one reads (evaluated first, when they are missing), by attack name."""
    out = {}
    for name in shard.depends_on():
        rows = read_results([_evaluate_shard(shard.of(name), opts, data)])
        out[name] = earlier_of(shard.attack, shard.suite.attack(name),
                               rows.sort_values("index").reset_index(drop=True))
    return out


def _columns(shard: _Shard, labels: list[int], out: AttackedInputs,
             seconds: float) -> dict[str, list[object]]:
    """The shard's rows, column by column (``jobs.schema.COLUMNS``)."""
    n = shard.stop - shard.start
    loaded, entry = shard.loaded, shard.attack
    clean_correct = [p == t for p, t in zip(out.clean_pred, labels, strict=True)]
    robust = [c and not f for c, f in zip(clean_correct, out.fooled, strict=True)]
    broken_by = ["" if r else CLEAN if not c else (b or entry.name)
                 for r, c, b in zip(robust, clean_correct, out.breaker, strict=True)]
    columns: dict[str, list[object]] = {
        "model_id": [shard.loaded.model_id] * n,
        "model_label": [shard.label] * n,
        "dataset": [shard.suite.dataset] * n,
        "strategy": [loaded.record["strategy"]] * n,
        "train_attacks": [json.dumps(loaded.train_families)] * n,
        "groups": [json.dumps(shard.groups)] * n,
        "seed": [loaded.seed] * n,
        "checkpoint_digest": [loaded.digest] * n,
        "suite": [shard.suite.name] * n,
        "attack": [entry.name] * n,
        "family": [entry.family] * n,
        "kind": [entry.kind] * n,
        "epsilon": [entry.ball().epsilon] * n,
        "budget": [entry.budget] * n,
        "attack_spec": [json.dumps(entry.spec.to_dict(), sort_keys=True)] * n,
        "eval_seed": [shard.seed] * n,
        "index": list(range(shard.start, shard.stop)),
        "label": labels,
        "clean_pred": out.clean_pred,
        "adv_pred": out.adv_pred,
        "clean_correct": clean_correct,
        "fooled": out.fooled,
        "robust": robust,
        "broken_by": broken_by,
        "example": out.example,
        "perturbation": out.size,
        "loss": out.loss,
        "shard_start": [shard.start] * n,
        "shard_stop": [shard.stop] * n,
        "shard_seconds": [seconds] * n,
    }
    assert list(columns) == list(COLUMNS)
    return columns


def _metadata(shard: _Shard, key: str, prior: CascadePrior) -> dict[bytes, bytes]:
    loaded = shard.loaded
    cost = loaded.train_cost
    cascade = ({"cascade": {"after": list(shard.attack.after),
                            "broken_by": prior.broken_map(shard.start)}}
               if shard.attack.after else {})
    return make_metadata(
        model={
            "model_id": loaded.model_id,
            "label": shard.label,
            "checkpoint_digest": loaded.digest,
            "config": loaded.record,
            **({"train_cost": cost} if cost is not None else {}),
        },
        suite=shard.suite.to_dict(),
        shard={"attack": shard.attack.name, "start": shard.start, "stop": shard.stop,
               "content_key": key, **cascade},
    )


def _evaluate_shard(shard: _Shard, opts: _Options, data: tuple[Tensor, Tensor] | None) -> Path:
    """Write the shard's file unless it already holds the same content; return its path."""
    key = shard.content_key()
    loaded = shard.loaded
    path = shard_path(opts.out_dir, loaded.model_id, shard.attack.name, shard.start, shard.stop)
    if path.exists() and existing_content_key(path) == key:
        return path
    x_all, y_all = data if data is not None else _test_points(shard.suite, shard.stop, opts)
    if len(x_all) < shard.stop:
        raise ValueError(f"shard [{shard.start}, {shard.stop}) needs {shard.stop} test points, "
                         f"only {len(x_all)} loaded")
    x, y = x_all[shard.start : shard.stop], y_all[shard.start : shard.stop]
    earlier = _earlier(shard, opts, (x_all, y_all))
    t0 = time.perf_counter()  # this shard's own work, not that of the shards it read
    prior = prior_from_rows([earlier[name] for name in shard.attack.after], shard.stop - shard.start)
    if shard.attack.thresholds:
        assert shard.attack.below is not None
        out = threshold_rows(earlier[shard.attack.below].rows, shard.attack.ball(), prior)
    else:
        attack = jobs.attacks.make_attack(shard.attack.spec, bounds=loaded.bounds,
                                          stop_when_fooled=True)
        out = attack_inputs(loaded.model, loaded.device, attack, shard.attack.ball(), x, y,
                            seed=shard.seed, batch_size=opts.batch_size, prior=prior)
    seconds = time.perf_counter() - t0
    metadata = _metadata(shard, key, prior)
    table = pa.table(_columns(shard, y.tolist(), out, seconds), schema=SCHEMA.with_metadata(metadata))
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


# ----------------------------------------------------------------------------------------------
# Entry points


def evaluate_shard(
    model: ModelSource,
    suite: EvalSuite | str,
    attack_name: str,
    start: int,
    stop: int,
    out_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    model_label: str | None = None,
    groups: Sequence[str] | None = None,
    download: bool = False,
    batch_size: int = 256,
) -> Path:
    """Evaluate test points ``[start, stop)`` against one attack; write and return the shard file.

    ``model``: a checkpoint path, an external model (``jobs.external.ExternalModel``; ``download``
    also lets RobustBench fetch its checkpoint) or a ``LoadedModel``. Idempotent: a file with
    the same content key is returned without recomputing. Raises ``ConfigError`` for a
    model of another dataset, ``ConfigError`` for an unknown attack name.
    """
    suite = load_suite(suite)
    suite.attack(attack_name)
    loaded = load_model(model, suite, device, label=model_label, download=download)
    opts = _Options(out_dir, data_dir, download, model_label, groups, batch_size)
    return _evaluate_shard(_shard(loaded, suite, attack_name, start, stop, opts), opts, None)


def evaluate(
    model: ModelSource,
    suite: EvalSuite | str,
    *,
    n_test: int | None = None,
    out_dir: str | os.PathLike[str],
    shard_size: int = 100,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    model_label: str | None = None,
    groups: Sequence[str] | None = None,
    download: bool = False,
    attacks: Sequence[str] | None = None,
    batch_size: int = 256,
    on_shard: Callable[[str, int, int, Path], None] | None = None,
) -> list[Path]:
    """Every attack (or the named ``attacks``) x every shard of the first ``n_test`` points
    (default: the suite's ``n_test``), sequentially. ``on_shard(attack, start, stop, path)``
    runs after each shard (for progress bars)."""
    suite = load_suite(suite)
    names = list(attacks) if attacks is not None else [a.name for a in suite.attacks]
    for name in names:
        suite.attack(name)
    n = n_test if n_test is not None else suite.n_test
    shards = plan_shards(n, shard_size)
    loaded = load_model(model, suite, device, label=model_label, download=download)
    opts = _Options(out_dir, data_dir, download, model_label, groups, batch_size)
    data = _test_points(suite, n, opts)
    paths = []
    for name in names:
        for start, stop in shards:
            path = _evaluate_shard(_shard(loaded, suite, name, start, stop, opts), opts, data)
            paths.append(path)
            if on_shard is not None:
                on_shard(name, start, stop, path)
    return paths
