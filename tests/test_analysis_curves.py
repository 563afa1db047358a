"""Robustness curves, their areas and CR_ind on hand-made results with answers computed by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis import build_report, load_results
from analysis.curves import BUDGET, RADIUS, UNION, area, group_curves
from analysis.metrics import group_table
from analysis.stats import Estimate
from tests.runfolder import AttackSpec, ModelSpec, write_shard

GROUPS = {"g": {"families": ["linf", "l1"], "affine": []}}
PGD_INF = AttackSpec("pgd_linf", "linf", "first-order", 0.4)
PGD_1 = AttackSpec("pgd_l1", "l1", "first-order", 10.0)
MAX = ModelSpec("m-max", "Adv_max", "max", ("linf", "l1"), ("g",), "mnist")
SINGLE_INF = ModelSpec("m-inf", "Adv_inf", "single", ("linf",), ("g",), "mnist")
SINGLE_1 = ModelSpec("m-1", "Adv_1", "single", ("l1",), ("g",), "mnist")
N = 10


def write(run_dir, model, attack, fooled_at, *, clean_wrong=()):
    write_shard(run_dir, model, attack, clean_correct=[i not in clean_wrong for i in range(N)],
                fooled=[i in fooled_at for i in range(N)], suite_groups=GROUPS)


def write_points(run_dir, model, attack, fooled: dict[float, set[int]], clean_wrong=()):
    """The attack at each budget of ``fooled`` (1.0: the attack itself)."""
    for budget, at in fooled.items():
        write(run_dir, model, attack if budget == 1.0 else attack.at(budget), at,
              clean_wrong=clean_wrong)


@pytest.fixture
def hand_run(tmp_path):
    """10 inputs, linf at budgets 0.25 / 0.5 / 1 (radii 0.1 / 0.2 / 0.4), l1 at 0.5 / 1.

    Adv_max (clean 10/10): linf fools {0} / {0,1} / {0..3}: 0.9, 0.8, 0.6;
      l1 fools {0} / {0..3}: 0.9, 0.6; union at 0.5: {0,1} fooled -> 0.8, at 1: {0..3} -> 0.6.
    Adv_inf (clean 10/10): linf fools {} / {} / {0,1}: 1, 1, 0.8; l1 fools {0..4} / {0..7}: 0.5, 0.2.
    Adv_1 (input 9 misclassified, clean 0.9): linf fools {0..3} / {0..3} / {0..5}: 0.5, 0.5, 0.3;
      l1 fools {} / {0}: 0.9, 0.8.
    """
    write_points(tmp_path, MAX, PGD_INF, {0.25: {0}, 0.5: {0, 1}, 1.0: {0, 1, 2, 3}})
    write_points(tmp_path, MAX, PGD_1, {0.5: {0}, 1.0: {0, 1, 2, 3}})
    write_points(tmp_path, SINGLE_INF, PGD_INF, {0.25: set(), 0.5: set(), 1.0: {0, 1}})
    write_points(tmp_path, SINGLE_INF, PGD_1, {0.5: set(range(5)), 1.0: set(range(8))})
    write_points(tmp_path, SINGLE_1, PGD_INF, {0.25: set(range(4)), 0.5: set(range(4)),
                                               1.0: set(range(6))}, clean_wrong={9})
    write_points(tmp_path, SINGLE_1, PGD_1, {0.5: set(), 1.0: {0}}, clean_wrong={9})
    return load_results(tmp_path)


def curves_of(rs):
    table = group_table(rs, "g")
    return table, group_curves(rs, table)


def test_curves_and_areas_by_hand(hand_run):
    table, rc = curves_of(hand_run)
    assert rc.columns == ("linf", "l1", UNION)
    assert rc.axes == {"linf": RADIUS, "l1": RADIUS, UNION: BUDGET}
    assert rc.xs["linf"] == pytest.approx((0.1, 0.2, 0.4))
    m = {c.display: c for c in rc.models}["Adv_max"]
    linf = m.curves["linf"]
    assert [x for x, _ in linf.points] == pytest.approx([0.0, 0.1, 0.2, 0.4])
    assert [e.value for _, e in linf.points] == pytest.approx([1.0, 0.9, 0.8, 0.6])
    # trapezoid: (1 + .9)/2 * .1 + (.9 + .8)/2 * .1 + (.8 + .6)/2 * .2 = .32, over 0.4: 0.8
    assert linf.area.value == pytest.approx(0.8) and linf.area.n == N
    # l1 at radii 5 and 10: (1 + .9)/2 * 5 + (.9 + .6)/2 * 5 = 8.5, over 10
    assert m.curves["l1"].area.value == pytest.approx(0.85)
    union = m.curves[UNION]
    assert [x for x, _ in union.points] == [0.0, 0.5, 1.0]  # the budgets both families have
    assert [e.value for _, e in union.points] == pytest.approx([1.0, 0.8, 0.6])
    assert union.area.value == pytest.approx((1 + 0.8) / 2 * 0.5 + (0.8 + 0.6) / 2 * 0.5)
    # the full-budget point is the table's family column, for every model
    for row in table.rows:
        curves = {c.model_id: c for c in rc.models}[row.model.model_id].curves
        for fam in ("linf", "l1", UNION):
            assert curves[fam].at(1.0) == row.cells[fam].estimate
    # Adv_1 misses no point: its area is over the same range, from its own clean accuracy 0.9
    adv1 = {c.display: c for c in rc.models}["Adv_1"].curves["linf"]
    assert adv1.area.value == pytest.approx(
        ((0.9 + 0.5) / 2 * 0.1 + (0.5 + 0.5) / 2 * 0.1 + (0.5 + 0.3) / 2 * 0.2) / 0.4)


def test_area_is_the_mean_of_per_input_areas():
    outcomes = [pd.Series([True, True, True]), pd.Series([True, False, True]),
                pd.Series([False, False, True])]
    # input 0: robust on [0, 1], then falls: (1 + 1)/2 + (1 + 0)/2 = 1.5 over 2
    assert area([0.0, 1.0, 2.0], outcomes) == Estimate(k=0.75 + 0.25 + 1.0, n=3)
    assert area([0.0], outcomes[:1]) is None


def test_cr_ind_by_hand(hand_run):
    """References: Adv_inf for linf, Adv_1 for l1; clean reference max(1.0, 0.9) = 1.0.

    Adv_max's ratios: clean 1/1; linf .9/1, .8/1, .6/.8; l1 .9/.9, .6/.8.
    """
    _, rc = curves_of(hand_run)
    assert rc.references == {"linf": "Adv_inf", "l1": "Adv_1"}
    by = {c.display: c for c in rc.models}
    ratios = [1.0, 0.9, 0.8, 0.75, 1.0, 0.75]
    assert by["Adv_max"].cr_avg == pytest.approx(100 * sum(ratios) / len(ratios))
    assert by["Adv_max"].cr_worst == pytest.approx(75.0)
    # Adv_inf against itself on linf (1, 1, 1) and against Adv_1 on l1 (.5/.9, .2/.8)
    own = [1.0, 1.0, 1.0, 1.0, 0.5 / 0.9, 0.2 / 0.8]
    assert by["Adv_inf"].cr_avg == pytest.approx(100 * sum(own) / len(own))
    assert by["Adv_inf"].cr_worst == pytest.approx(25.0)
    # Adv_1's clean point is 0.9 against the best reference's 1.0
    assert by["Adv_1"].cr_worst == pytest.approx(100 * min(0.9, 0.5, 0.5, 0.3 / 0.8, 1.0, 1.0))


def test_no_reference_model_no_cr(tmp_path):
    write_points(tmp_path, MAX, PGD_INF, {0.5: {0}, 1.0: {0, 1}})
    write_points(tmp_path, MAX, PGD_1, {0.5: set(), 1.0: {0}})
    write_points(tmp_path, SINGLE_INF, PGD_INF, {0.5: set(), 1.0: {0}})
    write_points(tmp_path, SINGLE_INF, PGD_1, {0.5: {0}, 1.0: {0, 1}})
    report = build_report(load_results(tmp_path))
    (rc,) = report.robustness
    assert all(m.cr_avg is None and m.cr_worst is None for m in rc.models)
    assert all(m.curves["linf"].area is not None for m in rc.models)
    assert ("group g: no CR_ind figures: no single-perturbation model trained on l1 to serve "
            "as the reference") in report.notes


def test_missing_points(tmp_path):
    """A model without the group's sweep gets no area; without the references' points, no CR."""
    write_points(tmp_path, MAX, PGD_INF, {0.5: {0}, 1.0: {0, 1}})
    write_points(tmp_path, MAX, PGD_1, {0.5: set(), 1.0: {0}})
    write_points(tmp_path, SINGLE_INF, PGD_INF, {0.5: set(), 1.0: {0}})
    write_points(tmp_path, SINGLE_INF, PGD_1, {0.5: set(range(N)), 1.0: set(range(N))})
    write_points(tmp_path, SINGLE_1, PGD_INF, {1.0: {0}})
    write_points(tmp_path, SINGLE_1, PGD_1, {1.0: {0, 1}})
    report = build_report(load_results(tmp_path))
    (rc,) = report.robustness
    by = {c.display: c for c in rc.models}
    assert by["Adv_1"].curves["linf"].area is None
    assert by["Adv_max"].curves["linf"].area is not None
    # Adv_1 is l1's reference and lacks the l1 point at 0.5: no model has CR figures
    assert all(m.cr_avg is None for m in rc.models)
    notes = "\n".join(report.notes)
    assert "no area under the linf, l1, union curves for Adv_1 (not evaluated" in notes
    assert "no CR_ind figures for Adv_inf, Adv_1, Adv_max" in notes


def test_zero_reference_point_left_out(tmp_path):
    write_points(tmp_path, MAX, PGD_INF, {0.5: {0}, 1.0: {0, 1}})
    write_points(tmp_path, MAX, PGD_1, {0.5: set(), 1.0: {0}})
    write_points(tmp_path, SINGLE_INF, PGD_INF, {0.5: set(), 1.0: {0}})
    write_points(tmp_path, SINGLE_INF, PGD_1, {0.5: set(), 1.0: set()})
    write_points(tmp_path, SINGLE_1, PGD_INF, {0.5: set(), 1.0: set()})
    write_points(tmp_path, SINGLE_1, PGD_1, {0.5: set(), 1.0: set(range(N))})
    report = build_report(load_results(tmp_path))
    (rc,) = report.robustness
    assert rc.references == {"linf": "Adv_inf", "l1": "Adv_1"}
    by = {c.display: c for c in rc.models}
    # Adv_max: clean 1/1, linf .9/1 and .8/.9, l1 1/1; Adv_1 has 0 on l1 at the full budget
    ratios = [1.0, 0.9, 0.8 / 0.9, 1.0]
    assert by["Adv_max"].cr_avg == pytest.approx(100 * sum(ratios) / len(ratios))
    assert by["Adv_max"].cr_worst == pytest.approx(100 * 0.8 / 0.9)
    assert ("group g: CR_ind leaves out the points where the reference's accuracy is 0 "
            "(l1 at 1 of the budget)") in report.notes


def test_small_radii_keep_their_points(tmp_path):
    """Budget 1/300 (a radius of 0.0013 on the 0.4 ball): its rows are found, though the
    budget agrees with its 6-decimal rounding only to 3e-7 (Figure 1 and the curves alike)."""
    write_points(tmp_path, MAX, PGD_INF, {1 / 300: set(), 1 / 30: {0}, 1.0: {0, 1}})
    write_points(tmp_path, MAX, PGD_1, {1.0: {0}})
    report = build_report(load_results(tmp_path))
    (rc,) = report.robustness
    assert rc.budgets["linf"] == pytest.approx((1 / 300, 1 / 30, 1.0))
    (fig1,) = report.curves
    assert [t for t, _ in fig1.family["linf"]] == pytest.approx([0.0, 1 / 300, 1 / 30, 1.0])
