"""The protocol table, Figure 1's protocol statement and "reduced protocol" label, what broke each
input (broken_by), the train cost column and the rows' order, on synthetic run folders."""

from __future__ import annotations

import csv
import json

import matplotlib
import pytest
from rich.console import Console

from analysis import build_report, load_results, make_report
from analysis.figures import plot_sweep
from analysis.protocol import broken_by_counts, fmt_points, protocol_rows
from analysis.render import print_console, summary_markdown, tex_escape
from tests.runfolder import AttackSpec, ModelSpec, build_run_folder, preset_attacks, write_shard

COSTS = {"nat": (1.0, 1.0), "single": (11.0, 11.0), "avg": (31.0, 31.0), "max": (31.0, 31.0),
         "msd": (41.0, 41.0), "eat": (11.0, 11.0), "random": (12.0, 10.0)}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """mnist-lp under the full protocol: every model at every point, a linf radius range beyond
    the full budget, the new strategies, and training costs."""
    return build_run_folder(tmp_path_factory.mktemp("full") / "run", preset="mnist-lp", n=60,
                            shard_size=60, protocol="full",
                            sweep_strategies=tuple(COSTS), radii={"linf": [0.0, 0.2, 0.4]},
                            extra_strategies=("msd", "eat", "random"), train_costs=COSTS)


@pytest.fixture(scope="module")
def full_report(full_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("full-report")
    make_report(full_run, out, None)
    return out


def test_protocol_table_lists_exactly_the_suites_attacks(full_run):
    rows = protocol_rows(load_results(full_run))
    expected = [(a.family, a.name) for a in preset_attacks("mnist-lp")]
    assert [(r.family, r.attack) for r in rows] == expected
    by = {r.attack: r for r in rows}
    assert by["pgd_linf"].budgets == pytest.approx((0.25, 0.5, 2 / 3, 0.75, 1.0, 4 / 3))
    assert by["pgd_linf"].radii == pytest.approx((0.075, 0.15, 0.2, 0.225, 0.3, 0.4))
    assert by["pointwise_l1"].radii == pytest.approx((2.5, 5.0, 7.5, 10.0))
    assert (by["pgd_l1"].type, by["pgd_l1"].effort, by["pgd_l1"].restarts) == (
        "SLIDE", "40 steps", "2")
    assert by["pointwise_l1"].type == "foolbox pointwise_l1"


def test_protocol_in_every_format(full_report):
    md = (full_report / "report.md").read_text(encoding="utf-8")
    assert "## Evaluation protocol" in md
    assert "| l1 | pointwise_l1 | gradient-free | foolbox pointwise_l1 | 10 | 1000 start steps |" in md
    assert "radius 0.075, 0.15, 0.2, 0.225, 0.3, 0.4" in md
    assert "radius ranges asked for: linf 0, 0.2, 0.4" in md
    assert "<td>pointwise_l1</td>" in (full_report / "report.html").read_text(encoding="utf-8")
    assert r"pointwise\_l1 & gradient-free" in (full_report / "report.tex").read_text(
        encoding="utf-8")
    with (full_report / "protocol.csv").open() as fh:
        assert [r["attack"] for r in csv.DictReader(fh)] == [
            a.name for a in preset_attacks("mnist-lp")]


@pytest.mark.parametrize(
    ("spec", "typ", "radius", "effort", "restarts"),
    [({"type": "autoattack", "version": "standard", "norm": "linf", "epsilon": 0.3},
      "AutoAttack standard (apgd-ce, apgd-t, fab-t, square)", "0.3",
      "AutoAttack's standard budgets", "1"),
     ({"type": "autoattack", "attack": "apgd-t", "norm": "l1", "epsilon": 10.0, "n_iter": 100,
       "n_restarts": 1, "n_target_classes": 5}, "AutoAttack apgd-t", "10",
      "100 iterations, 5 target classes", "1"),
     ({"type": "autoattack", "attack": "square", "norm": "l2", "epsilon": 2.0,
       "n_queries": 5000}, "AutoAttack square", "2", "5000 queries", "1"),
     ({"type": "rt", "spatial_limits": [3, 3, 30], "grid_granularity": [5, 5, 31],
       "random_tries": -1}, "RT grid", "±3 px, ±3 px, ±30°", "775 transforms", "1"),
     ({"type": "foolbox", "attack": "cw_l2", "epsilon": 2.0, "binary_search_steps": 9,
       "steps": 1000}, "foolbox cw_l2", "2", "9 × 1000 steps", "1"),
     ({"type": "msd", "k": 100, "reps": 3, "random_start": True,
       "attacks": [{"type": "linf", "epsilon": 0.3, "a": 0.01},
                   {"type": "l1", "epsilon": 10.0, "a": 1.0, "perc": 99}]},
      "MSD (linf, l1)", "linf 0.3 ∪ l1 10", "100 steps", "3"),
     ({"type": "affine", "reps": 2, "weight": None,
       "attacks": [{"type": "rt", "spatial_limits": [3, 3, 30], "grid_granularity": [5, 5, 31],
                    "random_tries": 10},
                   {"type": "linf", "epsilon": 0.3, "k": 20, "a": 0.01, "reps": 1}]},
      "affine (RT random + PGD)", "rt ±3 px, ±3 px, ±30° + linf 0.3",
      "10 random transforms + 20 steps", "2")],
    ids=["aa-standard", "apgd-t", "square", "rt-grid", "cw", "msd", "affine"],
)
def test_protocol_row_of_each_spec(tmp_path, spec, typ, radius, effort, restarts):
    attack = AttackSpec("a", "linf", "first-order", 0.3, spec=spec)
    write_shard(tmp_path, ModelSpec("m", "Nat", "nat", (), ("g",), "mnist"), attack,
                clean_correct=[True], fooled=[False],
                suite_extra={"attacks": [attack.suite_entry()]})
    (row,) = protocol_rows(load_results(tmp_path))
    assert (row.type, row.radius, row.effort, row.restarts) == (typ, radius, effort, restarts)


def test_fmt_points_and_tex_symbols():
    assert fmt_points([0.1, 0.2, 0.3, 0.4, 0.5]) == "0.1 to 0.5 by 0.1 (5 points)"
    assert fmt_points([0.25, 0.5, 1.0]) == "0.25, 0.5, 1"
    assert tex_escape("±3 px, ±30°; 9 × 1000; a ∪ b") == (
        r"$\pm$3 px, $\pm$30$^{\circ}$; 9 $\times$ 1000; a $\cup$ b")


def test_figure1_caption_states_the_protocol(full_report, tmp_path):
    md = (full_report / "report.md").read_text(encoding="utf-8")
    assert ("Group mnist-lp (suite synthetic): every point uses the same attacks, scaled to its "
            "radius: linf: pgd_linf; l1: pgd_l1, pointwise_l1; l2: pgd_l2.") in md
    assert "reduced protocol" not in md
    reduced = build_run_folder(tmp_path / "reduced", preset="mnist-lp", n=20, shard_size=20)
    make_report(reduced, tmp_path / "out", "md")
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert ("reduced protocol (the suite says budgets_protocol: reduced): points below the full "
            "budget use only linf: pgd_linf; l1: pgd_l1; l2: pgd_l2; the full-budget point is "
            "the worst case over linf: pgd_linf; l1: pgd_l1, pointwise_l1; l2: pgd_l2.") in md


@pytest.mark.parametrize("protocol", ["reduced", "full"])
def test_figure1_legend_labels_a_reduced_protocol(tmp_path, protocol):
    run = build_run_folder(tmp_path / "run", n=20, shard_size=20, protocol=protocol)
    (curves,) = build_report(load_results(run)).curves
    assert curves.reduced is (protocol == "reduced")
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text, to read the legend
        svg = next(p for p in plot_sweep(curves, tmp_path / "fig") if p.suffix == ".svg")
    text = svg.read_text(encoding="utf-8")
    assert ("union, reduced protocol" in text) is (protocol == "reduced")
    assert ("linf (ε=0.4), reduced protocol" in text) is (protocol == "reduced")


def test_reduced_curves_are_labelled(tmp_path):
    run = build_run_folder(tmp_path / "run", n=20, shard_size=20)
    summary = summary_markdown(build_report(load_results(run)))
    assert "#### toy: area under the robustness curves and CR_ind (%) (reduced protocol)" in summary


# --------------------------------------------------------------------------------------------
# broken_by


LINF = {"type": "linf", "epsilon": 0.3, "k": 40, "reps": 1}
AA = {"type": "autoattack", "version": "standard", "norm": "linf", "epsilon": 0.3}


@pytest.mark.parametrize(
    ("order", "expected"),
    [(("pgd", "aa"), (("clean", 1), ("pgd", 2), ("apgd-ce", 1), ("apgd-t", 1), ("square", 1))),
     (("aa", "pgd"), (("clean", 1), ("apgd-ce", 2), ("apgd-t", 1), ("square", 1), ("pgd", 1)))],
    ids=["pgd-first", "autoattack-first"],
)
def test_broken_by_counts(tmp_path, order, expected):
    """8 inputs, input 7 misclassified clean; PGD fools {0, 1}, AutoAttack {1, 2, 3, 4} (input 1
    by APGD-CE): each input counts once, for the first attack in suite order that broke it."""
    model = ModelSpec("m", "Adv_inf", "single", ("linf",), ("g",), "mnist")
    attacks = {"pgd": AttackSpec("pgd", "linf", "first-order", 0.3, spec=LINF),
               "aa": AttackSpec("aa", "linf", "first-order", 0.3, spec=AA)}
    extra = {"attacks": [attacks[name].suite_entry() for name in order]}
    clean = [True] * 7 + [False]
    write_shard(tmp_path, model, attacks["pgd"], clean_correct=clean,
                fooled=[i in (0, 1) for i in range(8)], suite_groups={"g": ["linf"]},
                suite_extra=extra)
    by_aa = {1: "apgd-ce", 2: "apgd-ce", 3: "apgd-t", 4: "square", 7: "clean"}
    write_shard(tmp_path, model, attacks["aa"], clean_correct=clean,
                fooled=[i in by_aa and i != 7 for i in range(8)], suite_groups={"g": ["linf"]},
                suite_extra=extra, broken_by=[by_aa.get(i, "") for i in range(8)])
    rs = load_results(tmp_path)
    (b,) = broken_by_counts(rs, "g")
    assert (b.display, b.family, b.n, b.not_robust) == ("Adv_inf", "linf", 8, 6)
    assert b.counts == expected
    report = build_report(rs)
    make_report(tmp_path, tmp_path / "out", "md,csv")
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| Adv_inf | linf | 8 | 6 | " + ", ".join(f"{v} {k}" for v, k in expected) + " |" in md
    with (tmp_path / "out" / "broken_by.csv").open() as fh:
        rows = [(r["broken_by"], int(r["inputs"])) for r in csv.DictReader(fh)]
    assert tuple(rows) == expected and report.broken_by == [b]


# --------------------------------------------------------------------------------------------
# Train cost and row order


def test_train_cost_column(full_run, full_report):
    """passes per example / the single models' mean (22): Nat 2/22, Adv_max 62/22, ..."""
    report = build_report(load_results(full_run))
    (table,) = report.tables
    costs = {r.display: r.train_cost for r in table.rows}
    assert costs == pytest.approx({"Nat": 2 / 22, "Adv_inf": 1.0, "Adv_1": 1.0, "Adv_2": 1.0,
                                   "Adv_avg": 62 / 22, "Adv_max": 62 / 22, "Adv_msd": 82 / 22,
                                   "Adv_eat": 1.0, "Adv_rand": 1.0})
    md = (full_report / "report.md").read_text(encoding="utf-8")
    assert "| union | average | train cost |" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| Adv_msd | 60 |"))
    assert row.endswith("| 3.73 |")
    assert next(ln for ln in md.splitlines() if ln.startswith("| OPT |")).endswith("|  |")
    summary = summary_markdown(report)
    assert next(ln for ln in summary.splitlines() if ln.startswith("| Nat |")).endswith(
        "| 0.09 |")
    assert "train cost" in (full_report / "tables.tex").read_text(encoding="utf-8")
    assert "<th>train cost</th>" in (full_report / "report.html").read_text(encoding="utf-8")
    with (full_report / "tables.csv").open() as fh:
        by = {(r["model"], r["column"]): r for r in csv.DictReader(fh)}
    assert float(by["Adv_max", "union"]["train_cost"]) == pytest.approx(62 / 22)
    assert float(by["Adv_max", "union"]["train_passes_per_example"]) == 62.0
    console = Console(record=True, width=250)
    print_console(report, console)
    text = console.export_text()
    assert "train cost" in text and "2.82" in text


def test_train_cost_sources_and_missing_costs(tmp_path):
    """The results metadata's cost, else trial.json's; a model without a cost has an empty cell;
    the reference is the mean of the single models' (22 and 42)."""
    attack = AttackSpec("pgd", "linf", "first-order", 0.3)
    cost = {"fwd_per_example": 11.0, "bwd_per_example": 11.0}
    models = [ModelSpec("inf", "Adv_inf", "single", ("linf",), ("g",), "mnist", train_cost=cost),
              ModelSpec("one", "Adv_1", "single", ("l1",), ("g",), "mnist"),
              ModelSpec("max", "Adv_max", "max", ("linf", "l1"), ("g",), "mnist",
                        train_cost={"fwd_per_example": 31.0, "bwd_per_example": 31.0}),
              ModelSpec("nat", "Nat", "nat", (), ("g",), "mnist")]
    for m in models:
        write_shard(tmp_path, m, attack, clean_correct=[True] * 4, fooled=[False] * 4,
                    suite_groups={"g": ["linf"]})
    trial = tmp_path / "trials" / "one"
    trial.mkdir(parents=True)
    (trial / "trial.json").write_text(json.dumps(
        {"state": "DONE", "train_cost": {"fwd_per_example": 21.0, "bwd_per_example": 21.0}}))
    (table,) = build_report(load_results(tmp_path)).tables
    assert {r.display: r.train_cost for r in table.rows} == pytest.approx(
        {"Nat": None, "Adv_inf": 22 / 32, "Adv_1": 42 / 32, "Adv_max": 62 / 32})
    (trial / "trial.json").write_text(json.dumps({"state": "DONE"}))
    for m in models[:1]:
        write_shard(tmp_path, ModelSpec(m.model_id, m.label, m.strategy, m.train_families,
                                        m.groups, m.dataset), attack,
                    clean_correct=[True] * 4, fooled=[False] * 4, suite_groups={"g": ["linf"]})
    report = build_report(load_results(tmp_path))
    assert all(r.train_cost is None for r in report.tables[0].rows)
    assert ("group g: train cost not computed: no single-attack model has a recorded training "
            "cost") in report.tables[0].notes


def test_new_strategies_sort_after_avg_and_max(full_run, tmp_path):
    (table,) = build_report(load_results(full_run)).tables
    assert [r.display for r in table.rows] == [
        "Nat", "Adv_inf", "Adv_1", "Adv_2", "Adv_avg", "Adv_max", "Adv_msd", "Adv_eat",
        "Adv_rand"]
    attack = AttackSpec("pgd", "linf", "first-order", 0.3)
    for m in (ModelSpec("z", "Adv_new", "something", ("linf",), ("g",), "mnist"),
              ModelSpec("e", "E-AT run", "eat", ("linf", "l1"), ("g",), "mnist"),
              ModelSpec("s", "mine", "single", ("linf",), ("g",), "mnist"),
              ModelSpec("x", "Adv_max", "max", ("linf", "l1"), ("g",), "mnist")):
        write_shard(tmp_path, m, attack, clean_correct=[True] * 2, fooled=[False] * 2,
                    suite_groups={"g": ["linf"]})
    (table,) = build_report(load_results(tmp_path)).tables
    assert [r.display for r in table.rows] == ["mine", "Adv_max", "E-AT run", "Adv_new"]
