"""Soups and fine-tuned models in the report, on a hand-made run folder: each soup family's curve
(figure and soups.csv, ingredients at the ends), one row per soup family in the table (its best),
and the train cost with the ancestors'."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from analysis import build_report, load_results, make_report
from analysis.costs import PER_EXAMPLE, TOTAL, train_costs
from analysis.model_info import ModelInfo
from analysis.soups import SoupRecord
from tests.runfolder import AttackSpec, ModelSpec, write_shard

N = 40
GROUP = "toy"
FAMILIES = ("linf", "l1")
ATTACKS = (AttackSpec("pgd_linf", "linf", "first-order", 0.4),
           AttackSpec("pgd_l1", "l1", "first-order", 2.0))
#: passes per example (fwd, bwd) and examples of every model that trains
SCRATCH = {"fwd_per_example": 11.0, "bwd_per_example": 11.0, "examples": 1000,
           "train_seconds": 60.0, "device": "cpu (1 threads)"}
FINE = {**SCRATCH, "examples": 200}
OWN = {"inf": 22000.0, "one": 22000.0, "ft_inf": 4400.0, "ft_1": 4400.0}


def _lineage(*ids: str) -> dict[str, Any]:
    lineage = {m: {"passes": OWN[m], "examples": 1000.0 if m in ("inf", "one") else 200.0,
                   "train_seconds": 60.0} for m in ids}
    return {"lineage": lineage,
            "with_ancestors": {"passes": sum(OWN[m] for m in ids), "examples": 0.0,
                               "train_seconds": 0.0}}


SOUP_COST = {"fwd_per_example": 0.0, "bwd_per_example": 0.0, "train_seconds": 0.0,
             "examples": 0, **_lineage("inf", "ft_inf", "ft_1")}

#: model id -> (label, strategy, train families, config extras, cost, robust rate per family,
#: clean-misclassified inputs at the end)
MODELS: dict[str, tuple[str, str, tuple[str, ...], dict[str, Any], dict[str, Any],
                        tuple[float, float], int]] = {
    "inf": ("Adv_inf", "single", ("linf",), {}, SCRATCH, (0.9, 0.0), 0),
    "one": ("Adv_1", "single", ("l1",), {}, SCRATCH, (0.0, 0.8), 0),
    "ft_inf": ("FT_inf", "single", ("linf",), {"init": {"model": "Adv_inf", "parent": "inf"}},
               {**FINE, **_lineage("inf", "ft_inf")}, (0.85, 0.05), 0),
    "ft_1": ("FT_1", "single", ("l1",), {"init": {"model": "Adv_inf", "parent": "inf"}},
             {**FINE, **_lineage("inf", "ft_1")}, (0.1, 0.7), 0),
}


def _soup(family: str, ingredients: list[str], weights: list[float]) -> dict[str, Any]:
    labels = [MODELS[i][0] for i in ingredients]
    return {"soup": {"family": family, "ingredients": ingredients, "labels": labels,
                     "weights": weights, "model_id": "x"}}


SOUPS = {  # model id -> (family, weights, robust rates, clean-misclassified at the end)
    "s75": ("Soup_inf_1", [0.75, 0.25], (0.6, 0.2), 0),
    "s50": ("Soup_inf_1", [0.5, 0.5], (0.4, 0.4), 0),   # the best: union 0.4
    "s25": ("Soup_inf_1", [0.25, 0.75], (0.2, 0.5), 0),
    # three ingredients; both have union 0.3, the first has the higher clean accuracy
    "t5": ("Soup_3", [0.5, 0.25, 0.25], (0.5, 0.3), 0),
    "t2": ("Soup_3", [0.2, 0.4, 0.4], (0.3, 0.3), 4),
}
INGREDIENTS = {"Soup_inf_1": ["ft_inf", "ft_1"], "Soup_3": ["inf", "ft_inf", "ft_1"]}
for _mid, (_fam, _w, _rates, _bad) in SOUPS.items():
    _label = f"{_fam}({','.join(f'{w:g}' for w in _w)})"
    MODELS[_mid] = (_label, "soup", (), _soup(_fam, INGREDIENTS[_fam], _w), SOUP_COST, _rates,
                    _bad)


def _record(mid: str) -> dict[str, Any]:
    """The training config record, as the manifest holds it."""
    label, strategy, fams, extra, _, _, _ = MODELS[mid]
    return {"label": label, "strategy": strategy, "dataset": {"name": "toy", "params": {}},
            "model": {"name": "linear"}, "attacks": [{"type": f} for f in fams], "seed": 0,
            **extra}


def build_soup_run(root: Path) -> Path:
    """Results (metadata as jobs.evaluation writes it: the record nested under ``config``,
    the cost beside it) and a manifest for the models above; input i is robust to a family
    when i < rate x N."""
    trials, shards = {}, []
    for mid, (label, strategy, fams, _, cost, rates, bad) in MODELS.items():
        meta = {"model_id": mid, "label": label, "checkpoint_digest": "0" * 64,
                "config": _record(mid), "train_cost": cost}
        spec = ModelSpec(mid, label, strategy, fams, (GROUP,), "toy", config=meta)
        clean = [i < N - bad for i in range(N)]
        for attack, rate in zip(ATTACKS, rates, strict=True):
            write_shard(root, spec, attack, clean_correct=clean,
                        fooled=[i >= rate * N for i in range(N)],
                        suite_groups={GROUP: {"families": list(FAMILIES), "affine": []}})
            shards.append({"model_id": mid, "attack": attack.name, "start": 0, "stop": N})
        trials[mid] = {"label": label, "dataset": "toy", "strategy": strategy,
                       "groups": [GROUP], "config": _record(mid)}
    (root / "manifest.json").write_text(json.dumps({
        "groups": {GROUP: {"dataset": "toy", "families": list(FAMILIES), "affine": [],
                           "models": list(MODELS)}},
        "trials": trials, "shards": shards}))
    return root


@pytest.fixture(scope="module")
def soup_run(tmp_path_factory):
    return build_soup_run(tmp_path_factory.mktemp("soups") / "run")


@pytest.fixture(scope="module")
def soup_report(soup_run):
    """Every format, without the toy theory panel (not what is tested here)."""
    out = soup_run / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "analysis.theory_plot", types.SimpleNamespace())
        make_report(soup_run, out, None)
    return out


def _soup_points(out: Path) -> dict[str, list[dict[str, str]]]:
    """soups.csv's union rows, per soup family, in file order."""
    with (out / "soups.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["column"] == "union"]
    by: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by.setdefault(r["soup_family"], []).append(r)
    return by


@pytest.mark.parametrize(("family", "expected"), [
    ("Soup_inf_1", [("ft_inf", "ingredient", "1;0", 0.05, 0), ("s75", "soup", "0.75;0.25", 0.2, 0),
                    ("s50", "soup", "0.5;0.5", 0.4, 1), ("s25", "soup", "0.25;0.75", 0.2, 0),
                    ("ft_1", "ingredient", "0;1", 0.1, 0)]),
    ("Soup_3", [("inf", "ingredient", "1;0;0", 0.0, 0), ("t5", "soup", "0.5;0.25;0.25", 0.3, 1),
                ("t2", "soup", "0.2;0.4;0.4", 0.3, 0), ("ft_inf", "ingredient", "0;1;0", 0.05, 0),
                ("ft_1", "ingredient", "0;0;1", 0.1, 0)]),
], ids=["two-ingredients", "three-ingredients"])
def test_soup_curve_csv_has_the_soups_between_the_ingredients(soup_report, family, expected):
    points = _soup_points(soup_report)[family]
    assert [(p["model_id"], p["kind"], p["weights"], float(p["accuracy"]), int(p["in_table"]))
            for p in points] == [pytest.approx(e) for e in expected]
    assert [int(p["point"]) for p in points] == list(range(len(expected)))
    assert float(points[0]["x"]) == 1.0 and float(points[-1]["x"]) == 0.0


def test_soup_csv_has_every_column_of_every_point(soup_report):
    with (soup_report / "soups.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 * 4  # 5 points per family, clean + 2 families + union each
    s75 = {r["column"]: float(r["accuracy"]) for r in rows if r["model_id"] == "s75"}
    assert s75 == pytest.approx({"clean": 1.0, "linf": 0.6, "l1": 0.2, "union": 0.2})


def test_table_shows_one_row_per_soup_family_its_best(soup_run):
    report = build_report(load_results(soup_run))
    (table,) = report.tables
    soups = [r.display for r in table.rows if r.model.strategy == "soup"]
    # the tie on union (Soup_3) goes to the higher clean accuracy
    assert soups == ["Soup_3(0.5,0.25,0.25), best of 2", "Soup_inf_1(0.5,0.5), best of 3"]
    assert sorted(r.model.model_id for r in table.hidden) == ["s25", "s75", "t2"]
    best = next(r for r in table.rows if r.model.model_id == "s50")
    assert best.cells["union"].bold  # the best union of the rows shown
    # the folded soups are on their curve only: not among the masking or broken-by rows
    shown = {r.model.model_id for r in table.rows}
    assert {b.model_id for b in report.broken_by} == shown
    assert {f.model_id for f in report.masking} <= shown
    # OPT from the single models (the fine-tuned ones count), never from a soup
    assert {f: mid for f, (mid, _) in table.opt.per_family.items()} == {"linf": "inf",
                                                                        "l1": "one"}


def test_train_cost_with_ancestors_in_every_format(soup_run, soup_report):
    """Own passes / the from-scratch singles' mean (22000): fine-tunes 4400 own, 26400 with
    Adv_inf; a soup 0 own, 30800 with its ingredients' lineages (Adv_inf once)."""
    (table,) = build_report(load_results(soup_run)).tables
    costs = {r.model.model_id: (r.train_cost, r.train_cost_with_ancestors) for r in table.rows}
    assert costs["inf"] == (pytest.approx(1.0), None)
    assert costs["ft_inf"] == pytest.approx((0.2, 1.2))
    assert costs["s50"] == pytest.approx((0.0, 1.4))
    md = (soup_report / "report.md").read_text(encoding="utf-8")
    lines = md.splitlines()
    assert next(ln for ln in lines if ln.startswith("| Adv_inf |")).endswith("| 1.00 |")
    assert next(ln for ln in lines if ln.startswith("| FT_inf |")).endswith("| 0.20 (1.20) |")
    assert next(ln for ln in lines if ln.startswith("| Soup_inf_1(0.5,0.5), best of 3 |")
                ).endswith("| 0 (1.40) |")
    # a folded soup has no row of results (the trials list still names it)
    assert not any(ln.startswith("| Soup_inf_1(0.75,0.25) | 40 |") for ln in lines)
    assert any(ln.startswith("| Soup_inf_1(0.75,0.25) | s75 | soup |") for ln in lines)
    assert "in parentheses, with its ancestors' passes" in md
    assert "0.20 (1.20)" in (soup_report / "report.html").read_text(encoding="utf-8")
    assert "0.20 (1.20)" in (soup_report / "tables.tex").read_text(encoding="utf-8")
    with (soup_report / "tables.csv").open() as fh:
        by = {(r["model_id"], r["column"]): r for r in csv.DictReader(fh)}
    assert float(by["ft_inf", "union"]["train_cost_with_ancestors"]) == pytest.approx(1.2)
    assert float(by["ft_inf", "union"]["train_passes"]) == pytest.approx(4400)
    assert float(by["s50", "union"]["train_passes_with_ancestors"]) == pytest.approx(30800)
    assert by["inf", "union"]["train_cost_with_ancestors"] == ""
    assert ("s75", "union") not in by


def test_soup_figures_written_and_shown(soup_report):
    for stem in ("soup_toy_Soup_inf_1", "soup_toy_Soup_3"):
        for suffix in (".png", ".svg"):
            assert (soup_report / "figures" / f"{stem}{suffix}").stat().st_size > 0
    md = (soup_report / "report.md").read_text(encoding="utf-8")
    assert "## Model soups" in md
    assert "(figures/soup_toy_Soup_inf_1.png)" in md
    assert "FT_inf at 1, FT_1 at 0" in md
    assert "points are ordered by Adv_inf's weight" in md  # the three-ingredient caption
    html = (soup_report / "report.html").read_text(encoding="utf-8")
    assert html.count("<figure>") >= 2 and "Model soups" in html


def _info(mid: str, strategy: str, cost: dict[str, Any] | None, **record: Any) -> ModelInfo:
    return ModelInfo(mid, mid, strategy=strategy, config=record, train_cost=cost)


def test_train_costs_reference_and_units():
    """The reference is the from-scratch singles' mean; cost records without the examples
    keep the per-example passes (and no lineage)."""
    scratch = {"fwd_per_example": 10.0, "bwd_per_example": 10.0, "examples": 100}
    models = [_info("a", "single", scratch),
              _info("ft", "single", {**scratch, "examples": 10, **_lineage_of(2000.0, 200.0)},
                    init={"model": "a", "parent": "a"}),
              _info("max", "max", {**scratch, "fwd_per_example": 30.0, "bwd_per_example": 30.0})]
    costs = train_costs(models)
    assert costs.unit == TOTAL
    assert costs.own == pytest.approx({"a": 1.0, "ft": 0.1, "max": 3.0})
    assert costs.with_ancestors == {"a": None, "ft": pytest.approx(1.1), "max": None}
    old = [_info(m.model_id, m.strategy, {k: v for k, v in (m.train_cost or {}).items()
                                          if k != "examples"}, **m.config) for m in models]
    costs = train_costs(old)
    assert costs.unit == PER_EXAMPLE
    assert costs.own == pytest.approx({"a": 1.0, "ft": 1.0, "max": 3.0})
    assert set(costs.with_ancestors.values()) == {None}
    only_fine = train_costs(models[1:])
    assert only_fine.note == ("no single-attack model trained from scratch has a recorded "
                              "training cost")


def _lineage_of(parent: float, own: float) -> dict[str, Any]:
    return {"lineage": {"a": {"passes": parent}, "ft": {"passes": own}},
            "with_ancestors": {"passes": parent + own}}


@pytest.mark.parametrize("value", [
    None, "soup", {"ingredients": ["a"], "weights": [1.0]},
    {"ingredients": ["a", "b"], "weights": [0.5]},
    {"ingredients": ["a", "b"], "weights": [0.5, "x"]},
], ids=repr)
def test_malformed_soup_record_is_not_a_soup(value):
    assert SoupRecord.parse(value) is None


def test_soup_record_from_nested_results_metadata():
    info = ModelInfo("s", "S", config={"config": _record("s50")})
    assert info.soup == SoupRecord("Soup_inf_1", ("ft_inf", "ft_1"), ("FT_inf", "FT_1"),
                                   (0.5, 0.5))
    assert not info.from_scratch
    assert ModelInfo("inf", "Adv_inf", config=_record("inf")).from_scratch
