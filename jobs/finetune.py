"""Starting from a model: fine-tuning's starting points, and the cost that counts the ancestors.

A training config's ``init`` (``jobs.config.InitConfig``) names where its weights start:

- ``checkpoint: FILE``: an mpo checkpoint (``checkpoint.pt``, or a training folder's
  ``state.pt``); its embedded config gives the parent's model id and architecture;
- ``model: LABEL``: another model of the same grid; the sweep's plan sets ``parent`` to that
  model's id and the weights come from its ``checkpoint.pt`` in the same run folder (the
  trial folder beside the child's: ``trials/<parent id>/checkpoint.pt``);
- ``external: {...}``: a factory with weights, a TorchScript file or a RobustBench entry
  (``jobs.external``), loaded as ``mpo eval`` loads them. The child trains either one of mpo's
  architectures (``model: {name: mnist_cnn}``), which must take the weights as they are (and
  the model must read [0, 1] inputs unscaled), or the external model's own architecture
  (``model: {name: init}``: the loaded model with its input wrapper; its checkpoints load
  the same way, so the external source must stay where it is).

Every file is read with ``torch.load(..., weights_only=True)`` (``jobs.checkpoint``,
``jobs.external``). ``resolve_init`` fills in the parent's identity and refuses, before any
work, a parent of another dataset or an architecture that does not take the parent's weights,
naming both sides.

Cost: a checkpoint's ``cost`` record (``jobs.train_cost.training_cost``) gains ``lineage``:
{model id: that model's own cost (``passes``: forward plus backward passes in all, ``examples``,
``train_seconds``)} for the model and every ancestor, each once, and ``with_ancestors``: their
sum. A soup's lineage is the union of its ingredients' (``jobs.soup``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jobs.config import INIT_ARCHITECTURE, TrainConfig
from jobs.errors import ConfigError

CHECKPOINT_FILE = "checkpoint.pt"


def check_parent(child: TrainConfig, parent: Mapping[str, Any], *, parent_name: str,
                 source: str) -> None:
    """``ConfigError`` unless ``parent`` (a training config's dict) has the child's dataset and
    architecture; the message names both sides."""
    want, have = child.to_dict(), dict(parent)
    want_ds, have_ds = _part(want, "dataset", "params"), _part(have, "dataset", "params")
    if want_ds != have_ds:
        raise ConfigError(f"{source}: init: the parent {parent_name} is a model of dataset "
                          f"{_show(have_ds)}, the child trains on {_show(want_ds)}")
    want_m, have_m = _part(want, "model", "kwargs"), _part(have, "model", "kwargs")
    if want_m != have_m:
        raise ConfigError(f"{source}: init: the parent {parent_name} is a {_show(have_m)}, the "
                          f"child a {_show(want_m)}: the architectures must be the same")


def _part(config: Mapping[str, Any], key: str, extra: str) -> dict[str, Any]:
    """A config's dataset or model as {name, params or kwargs} (missing parts empty)."""
    part = config.get(key) or {}
    return {"name": part.get("name"), extra: dict(part.get(extra) or {})}


def _show(d: Mapping[str, Any]) -> str:
    extra = d.get("params") or d.get("kwargs")
    return f"'{d.get('name')}'" + (f" {dict(extra)}" if extra else "")


def resolve_init(config: TrainConfig, *, source: str = "training config") -> TrainConfig:
    """``config`` with its starting point's identity filled in (``parent``, ``digest``), after
    checking that the parent exists, is of the same dataset and fits the child's architecture.
    A config without ``init``, or one already resolved, comes back as it is; a grid parent
    (``init.model``) is resolved by the sweep's plan, not here."""
    init = config.init
    if init is None or init.parent is not None:
        return config
    if init.model is not None:
        raise ConfigError(f"{source}: init.model = {init.model!r} names a model of a grid; "
                          "outside a grid name an mpo checkpoint (init.checkpoint) or an external "
                          "model (init.external)")
    if init.checkpoint is not None:
        parent, digest = _checkpoint_parent(config, Path(init.checkpoint), source=source)
    else:
        parent, digest = _external_parent(config, source=source)
    return config.replace(init={**init.model_dump(mode="json"), "parent": parent, "digest": digest})


def _checkpoint_parent(config: TrainConfig, path: Path, *, source: str) -> tuple[str, str]:
    from jobs.checkpoint import load_checkpoint
    from jobs.config import make_train_config
    from jobs.errors import MpoError
    from jobs.io import file_digest

    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise ConfigError(f"{source}: init.checkpoint = {str(path)!r}: no such file (an mpo "
                          "checkpoint.pt, or the folder that holds one)")
    try:
        payload = load_checkpoint(path)
        parent_cfg = make_train_config(payload["config"], source=f"{path} (embedded config)")
    except MpoError as err:
        raise ConfigError(f"{source}: init.checkpoint: {err}") from None
    check_parent(config, payload["config"], parent_name=f"checkpoint {path}", source=source)
    _fit(config, payload["state_dict"], parent_name=f"checkpoint {path}", source=source)
    return parent_cfg.model_id(), file_digest(path)


def _external_parent(config: TrainConfig, *, source: str) -> tuple[str, str]:
    from jobs.external import ExternalModelError, parse_external
    from jobs.external.load import planned

    spec = parse_external(config.init.external or {}, source=f"{source}: init.external")
    if spec.dataset != config.dataset.name:
        raise ConfigError(f"{source}: init: the parent {spec.kind} model {spec.source} is a model "
                          f"of dataset '{spec.dataset}', the child trains on "
                          f"'{config.dataset.name}'")
    try:
        mid, record = planned(spec, label=spec.default_label())
        state = external_state_dict(spec, source=source,
                                    wrapped=config.model.name == INIT_ARCHITECTURE)
    except ExternalModelError as err:
        raise ConfigError(f"{source}: init.external: {err}") from None
    _fit(config, state, parent_name=f"{spec.kind} model {spec.source}", source=source)
    return mid, str(record["external"]["weights_digest"])


def external_state_dict(spec: Any, *, source: str, wrapped: bool = False) -> dict[str, Any]:
    """The weights of an external model, loaded as ``mpo eval`` loads it: with its input
    wrapper (``wrapped``, for ``model: {name: init}``), or as mpo's architectures hold them,
    without the wrapper, which must then be the identity."""
    import torch

    from jobs.external.load import load_external

    if wrapped:
        module = load_external(spec, device=torch.device("cpu")).module
        return {k: v.detach().clone() for k, v in module.state_dict().items()}
    if spec.mean is not None or tuple(spec.input_range) != (0.0, 1.0):
        raise ConfigError(f"{source}: init.external: {spec.kind} model {spec.source} scales its "
                          "inputs (input_range or mean/std); mpo's architectures read [0, 1] "
                          "inputs unscaled, so its weights would not mean the same in one; "
                          f"train its own architecture instead: model: {{name: {INIT_ARCHITECTURE}}}")
    loaded = load_external(spec, device=torch.device("cpu"))
    inner = getattr(loaded.module, "model", loaded.module)
    return {k: v.detach().clone() for k, v in inner.state_dict().items()}


def build_trainable(config: TrainConfig, device: Any = "cpu") -> Any:
    """The config's model, freshly initialised: an mpo architecture (``jobs.models``), or with
    ``model: {name: init}`` the external starting point as ``mpo eval`` loads it (with its input
    wrapper, so it reads [0, 1] inputs)."""
    import torch

    from jobs.models import build_model

    if config.model.name != INIT_ARCHITECTURE:
        return build_model(config.model.name, config.dataset_info(),
                           **config.model.kwargs).to(device)
    from jobs.external import parse_external
    from jobs.external.load import load_external

    spec = parse_external((config.init.external if config.init else None) or {},
                          source="init.external")
    return load_external(spec, device=torch.device(device)).module.train()


def _fit(config: TrainConfig, state: Mapping[str, Any], *, parent_name: str, source: str) -> None:
    """Refuse a parent whose weights do not fit the child's architecture (naming both)."""
    from jobs.external import ExternalModelError
    from jobs.external.load import fit_state_dict

    if config.model.name == INIT_ARCHITECTURE:
        return  # the parent's own architecture: its weights fit by construction
    model = build_trainable(config)
    try:
        fit_state_dict(model, state, source=f"the weights of the parent {parent_name}")
    except ExternalModelError as err:
        raise ConfigError(f"{source}: init: {err} (the child's model: '{config.model.name}'"
                          f"{' ' + str(dict(config.model.kwargs)) if config.model.kwargs else ''})"
                          ) from None


def parent_checkpoint(config: TrainConfig, out_dir: Path) -> Path:
    """The file the starting point's weights come from (a grid parent's: beside ``out_dir``)."""
    init = config.init
    assert init is not None
    if init.model is not None:
        return out_dir.parent / str(init.parent) / CHECKPOINT_FILE
    path = Path(str(init.checkpoint))
    return path / CHECKPOINT_FILE if path.is_dir() else path


def initial_weights(config: TrainConfig, out_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the starting point's state dict, its cost record: {} for an external model)."""
    from jobs.checkpoint import load_checkpoint
    from jobs.errors import MpoError
    from jobs.external import parse_external

    init = config.init
    assert init is not None
    if init.external is not None:
        spec = parse_external(init.external, source="init.external")
        return external_state_dict(spec, source="init.external",
                                   wrapped=config.model.name == INIT_ARCHITECTURE), {}
    path = parent_checkpoint(config, out_dir)
    if not path.is_file():
        raise MpoError(f"init: the parent's checkpoint {path} ({init.where}, model id "
                       f"{init.parent}) does not exist; train the parent first")
    payload = load_checkpoint(path)
    extra = payload.get("extra") or {}
    cost = extra.get("cost") or extra.get("train_cost") or {}
    if init.model is None and init.digest:
        from jobs.io import file_digest

        if file_digest(path) != init.digest:
            raise MpoError(f"init: {path} is not the checkpoint this config was made from "
                           f"(its sha256 changed); resolve the config again")
    return payload["state_dict"], dict(cost)


# ----------------------------------------------------------------------------------------------
# Cost with the ancestors


def own_cost(model_id: str, cost: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """{model_id: passes in all, examples, train_seconds} of a ``training_cost`` record."""
    examples = float(cost.get("examples") or 0)
    per = [cost.get(k) for k in ("fwd_per_example", "bwd_per_example")]
    passes = (sum(float(p) for p in per) * examples
              if all(isinstance(p, (int, float)) and math.isfinite(p) for p in per) else math.nan)
    seconds = cost.get("train_seconds")
    return {model_id: {"passes": passes, "examples": examples,
                       "train_seconds": float(seconds) if isinstance(seconds, (int, float))
                       else math.nan}}


def lineage_of(cost: Mapping[str, Any], model_id: str) -> dict[str, dict[str, float]]:
    """A cost record's lineage (itself alone when it records none)."""
    lineage = cost.get("lineage")
    if isinstance(lineage, Mapping) and lineage:
        return {str(k): dict(v) for k, v in lineage.items()}
    return own_cost(model_id, cost) if cost else {}


def with_lineage(own: Mapping[str, Any], model_id: str,
                 ancestors: Sequence[Mapping[str, dict[str, float]]]) -> dict[str, Any]:
    """``own`` plus ``lineage`` (itself and each ancestor once) and ``with_ancestors`` (their
    sum), or ``own`` unchanged for a model without ancestors."""
    if not any(ancestors):
        return dict(own)
    lineage: dict[str, dict[str, float]] = {}
    for a in ancestors:
        lineage.update(a)
    lineage.update(own_cost(model_id, own) if own else {})
    return {**own, "lineage": lineage, "with_ancestors": total(lineage)}


def total(lineage: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {k: float(sum(float(v.get(k, 0.0)) for v in lineage.values()))
            for k in ("passes", "examples", "train_seconds")}
