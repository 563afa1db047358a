"""Group 2, ``peer``: our attacks against torchattacks and foolbox on the same model, batch,
budget, steps and device, as a speedup (peer time / our time), with both success rates.

PGD and SLIDE are compared twice: at equal work (ours, as training and evaluation run it,
attacks every input for every step: both sides are then mostly the same model passes), and with
ours stopping each input at its first fooled iterate (``stop_when_fooled=True``, as evaluation
runs it: the same inputs are fooled for fewer passes). The RT grid is compared over the whole
grid, and as each side ships its early exit (foolbox: once every input is fooled; ours: each
input at its first fooling transform).

torchattacks is optional (the ``peers`` extra): without it its figure is ``skipped``. foolbox is
a regular dependency: a foolbox that does not import is an ``error``, not a skip.
"""

from __future__ import annotations

import importlib
import statistics
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from orchestrator.bench.figures import (
    Figure,
    Keep,
    Target,
    guarded,
    interleaved,
    per_rep,
    ratio_figure,
    skipped,
)
from orchestrator.bench.workload import Bench, lp_specs

if TYPE_CHECKING:
    import eagerpy as ep
    import foolbox

    from jobs.attacks.base import Attack

#: a second chunk size for the RT attack's scoring passes (reported next to the default's)
SMALL_EVAL_BATCH = 256


def _import_quietly(name: str) -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(name)


def _success(pred_wrong: torch.Tensor) -> float:
    return float(pred_wrong.float().mean())


def _ours(spec: dict[str, Any]) -> tuple[Attack, Attack]:
    """Our attack as the training and the evaluation run it (equal work: every input for every
    step), and the same attack stopping for each input at its first fooled iterate."""
    from jobs.attacks.pgd import PGDAttack
    from jobs.attacks.spec import parse_spec

    parsed = parse_spec(spec)
    return PGDAttack(parsed), PGDAttack(parsed, stop_when_fooled=True)


def _start(b: Bench) -> torch.Generator:
    """The generator of our random starts, seeded alike for every run (both of our variants
    start from the same points, so their successes differ only by the stopping)."""
    return torch.Generator(device=b.device).manual_seed(0)


def _pair(key: str, title: str, times: dict[str, list[float]], targets: tuple[Target, Target],
          details: dict[str, Any], success: dict[str, float]) -> list[Figure]:
    """Two figures: the peer / ours at equal work, and the peer / ours stopping when fooled
    (as evaluation runs it); ``targets``: theirs, in that order."""
    out = []
    for suffix, side, target, note in (
            ("", "ours", targets[0], "equal work: ours attacks every input for every step"),
            ("_stop", "ours_stop", targets[1], "ours stops each input at its first fooled iterate "
             "(the same inputs are fooled), as evaluation runs it")):
        out.append(ratio_figure(
            f"{key}{suffix}", "peer", f"{title}{' (ours stops when fooled)' if suffix else ''}",
            per_rep(times["peer"], times[side]), target=target,
            times={"ours": times[side], "peer": times["peer"]},
            details={**details, "success_ours": success[side], "success_peer": success["peer"],
                     "note": f"{details['note']}; {note}"}))
    return out


def peer_pgd(b: Bench, prefix: str) -> list[Figure]:
    key, title = f"{prefix}peer/pgd_linf_vs_torchattacks", "PGD l_inf: torchattacks.PGD / ours"
    targets = (Target(">=", 1.2), Target(">=", 3.0))
    try:
        ta = _import_quietly("torchattacks")
    except Exception as err:
        return [skipped(k, "peer", title, f"torchattacks not importable: {err}", t)
                for k, t in zip((key, f"{key}_stop"), targets, strict=True)]
    s = b.settings
    spec = lp_specs(s.k)["pgd_linf"]
    attack, stopping = _ours(spec)
    pgd = ta.PGD(b.model, eps=spec["epsilon"], alpha=attack.spec["a"], steps=s.k, random_start=True)
    ours = Keep(lambda: attack(b.model, b.x, b.y, generator=_start(b)))
    ours_stop = Keep(lambda: stopping(b.model, b.x, b.y, generator=_start(b)))
    peer = Keep(lambda: pgd(b.x, b.y))
    times = interleaved({"ours": ours, "ours_stop": ours_stop, "peer": peer}, reps=s.reps,
                        warmup=s.warmup, device=b.device)
    with torch.no_grad():
        peer_wrong = b.model(peer.result).argmax(1) != b.y
    success = {"ours": _success(ours.result.success), "ours_stop": _success(ours_stop.result.success),
               "peer": _success(peer_wrong)}
    return _pair(key, title, times, targets, {
        "spec": attack.spec, "batch": s.batch,
        "note": "same steps, step size and uniform random start in the cube; ours: CW-margin "
                "gradient, best iterate kept; torchattacks: cross-entropy gradient, last iterate",
    }, success)


def _foolbox_model(b: Bench) -> tuple[ModuleType, foolbox.PyTorchModel]:
    fb = _import_quietly("foolbox")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fb, fb.PyTorchModel(b.model, bounds=(0.0, 1.0), device=b.device)


def peer_slide(b: Bench, prefix: str) -> list[Figure]:
    key, title = f"{prefix}peer/slide_vs_foolbox", "SLIDE: foolbox SparseL1Descent / ours"
    from jobs.attacks import perturbation_norm

    fb, fmodel = _foolbox_model(b)
    s = b.settings
    spec = lp_specs(s.k)["slide"]
    attack, stopping = _ours(spec)
    slide = fb.attacks.SparseL1DescentAttack(quantile=spec["perc"] / 100.0, abs_stepsize=spec["a"],
                                             steps=s.k, random_start=True)
    ours = Keep(lambda: attack(b.model, b.x, b.y, generator=_start(b)))
    ours_stop = Keep(lambda: stopping(b.model, b.x, b.y, generator=_start(b)))
    peer = Keep(lambda: slide(fmodel, b.x, b.y, epsilons=spec["epsilon"]))
    times = interleaved({"ours": ours, "ours_stop": ours_stop, "peer": peer}, reps=s.reps,
                        warmup=s.warmup, device=b.device)
    _, peer_adv, peer_success = peer.result
    success = {"ours": _success(ours.result.success), "ours_stop": _success(ours_stop.result.success),
               "peer": _success(peer_success)}
    return _pair(key, title, times, (Target(">=", 2.0), Target(">=", 2.0)), {
        "spec": attack.spec, "batch": s.batch, "steps": s.k,
        "max_l1_ours": float(ours.result.norm.max()),
        "max_l1_peer": float(perturbation_norm(peer_adv - b.x, "l1").max()),
        "note": "same steps, step mass, percentile and random start; foolbox: numpy percentile on "
                "the host every step, loss.backward() (weight gradients too), cross-entropy "
                "gradient, last iterate",
    }, success)


def _never_adversarial(fb: ModuleType) -> foolbox.criteria.Criterion:
    """A foolbox criterion no input meets: the spatial attack then scores its whole grid, the
    same work as ours (its early exit, once every input is misclassified, never fires)."""
    import eagerpy as ep

    class Never(fb.criteria.Criterion):
        def __repr__(self) -> str:
            return "Never()"

        def __call__(self, perturbed: ep.Tensor, outputs: ep.Tensor) -> ep.Tensor:
            out, restore = ep.astensor_(outputs)
            return restore(out.argmax(axis=-1) < 0)

    return Never()


def peer_rt(b: Bench, prefix: str) -> list[Figure]:
    """Two figures: the whole grid on both sides (equal work), and foolbox as shipped (it stops
    once every input is misclassified) against ours as evaluation runs it (each input stops at
    its first fooling transform, in the grid's order)."""
    keys = {"full": (f"{prefix}peer/rt_grid_vs_foolbox",
                     "RT grid, whole grid: foolbox SpatialAttack / ours"),
            "early": (f"{prefix}peer/rt_grid_vs_foolbox_early_stop",
                      "RT grid: foolbox SpatialAttack (early stop) / ours")}
    target = Target(">=", 2.0)
    from jobs.attacks import make_attack

    fb, fmodel = _foolbox_model(b)
    s = b.settings
    gx, gy, ga = s.rt_grid
    spec = {"type": "rt", "spatial_limits": [3, 3, 30], "grid_granularity": [gx, gy, ga],
            "random_tries": -1}
    attack = make_attack(spec)
    attack_small = make_attack(spec, eval_batch=SMALL_EVAL_BATCH)
    stopping = make_attack(spec, stop_when_fooled=True)
    spatial = fb.attacks.SpatialAttack(max_translation=3, max_rotation=30, num_translations=gx,
                                       num_rotations=ga, grid_search=True)
    never = _never_adversarial(fb)
    ours = Keep(lambda: attack(b.model, b.x, b.y))
    ours_stop = Keep(lambda: stopping(b.model, b.x, b.y))
    peer = Keep(lambda: spatial(fmodel, b.x, b.y))
    with warnings.catch_warnings():  # foolbox's meshgrid call warns on every transform
        warnings.simplefilter("ignore", UserWarning)
        times = interleaved(
            {"ours": ours,
             "ours_stop": ours_stop,
             "ours_small_chunks": lambda: attack_small(b.model, b.x, b.y),
             "peer_full": lambda: spatial(fmodel, b.x, never),
             "peer": peer},
            reps=s.rt_reps, warmup=1, device=b.device,
        )
    details = {"grid": [gx, gy, ga], "transforms": gx * gy * ga, "batch": s.batch,
               "success_ours": _success(ours.result.success),
               "success_ours_stop": _success(ours_stop.result.success),
               "success_peer": _success(peer.result[2]),
               "eval_batch": attack.eval_batch,
               f"ours_eval_batch_{SMALL_EVAL_BATCH}_s":
                   statistics.median(times["ours_small_chunks"]),
               f"speedup_at_eval_batch_{SMALL_EVAL_BATCH}": statistics.median(
                   per_rep(times["peer_full"], times["ours_small_chunks"]))}
    full = ratio_figure(keys["full"][0], "peer", keys["full"][1],
                        per_rep(times["peer_full"], times["ours"]), target=target,
                        times={"ours": times["ours"], "peer": times["peer_full"]},
                        details={**details, "note": "foolbox forced through the whole grid (a "
                                 "criterion no input meets): equal work"})
    early = ratio_figure(keys["early"][0], "peer", keys["early"][1],
                         per_rep(times["peer"], times["ours_stop"]), target=target,
                         times={"ours": times["ours_stop"], "peer": times["peer"]},
                         details={**details, "note": "foolbox as shipped: stops once every "
                                  "input is misclassified; ours as evaluation runs it: each input "
                                  "stops at its first fooling transform (the same inputs fooled "
                                  "as scoring the whole grid)"})
    return [full, early]


#: each peer comparison and the keys of the figures it makes
PEERS: tuple[tuple[Callable[[Bench, str], list[Figure]], tuple[str, ...]], ...] = (
    (peer_pgd, ("pgd_linf_vs_torchattacks", "pgd_linf_vs_torchattacks_stop")),
    (peer_slide, ("slide_vs_foolbox", "slide_vs_foolbox_stop")),
    (peer_rt, ("rt_grid_vs_foolbox", "rt_grid_vs_foolbox_early_stop")),
)


def peer_figures(b: Bench, prefix: str = "") -> list[Figure]:
    out: list[Figure] = []
    for compare, keys in PEERS:
        out += guarded("peer", [f"{prefix}peer/{k}" for k in keys],
                       lambda compare=compare: compare(b, prefix))
    return out
