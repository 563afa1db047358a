"""Metrics on hand-made per-example results with answers computed by hand."""

from __future__ import annotations

import math

import pytest

from analysis import load_results
from analysis.metrics import (
    affine_rows,
    estimate,
    family_accuracy,
    group_table,
    masking_flag,
    opt_bounds,
    per_input,
    sweep_curves,
)
from analysis.stats import (
    Estimate,
    binomial_one_sided,
    mcnemar_exact,
    paired_sign_test,
    wilson_interval,
)
from tests.runfolder import AttackSpec, ModelSpec, write_shard

GROUPS = {"g": {"families": ["linf", "l1"], "affine": ["linf+l1"]}}
PGD_INF = AttackSpec("pgd_linf", "linf", "first-order", 0.3)
FGSM_INF = AttackSpec("fgsm_linf", "linf", "first-order", 0.3)
PGD_1 = AttackSpec("pgd_l1", "l1", "first-order", 10.0)
POINTWISE_1 = AttackSpec("pointwise_l1", "l1", "gradient-free", 10.0)
AFFINE = AttackSpec("affine", "linf+l1", "first-order", math.nan)

MAX = ModelSpec("m-max", "Adv_max", "max", ("linf", "l1"), ("g",), "mnist")
SINGLE_INF = ModelSpec("m-inf", "Adv_inf", "single", ("linf",), ("g",), "mnist")
SINGLE_1 = ModelSpec("m-1", "Adv_1", "single", ("l1",), ("g",), "mnist")


def mask(n: int, true_at) -> list[bool]:
    return [i in set(true_at) for i in range(n)]


def write(run_dir, model, attack, clean, fooled_at, n=10, start=0):
    write_shard(run_dir, model, attack, clean_correct=clean, fooled=mask(n, fooled_at),
                start=start, suite_groups=GROUPS)


@pytest.fixture
def hand_run(tmp_path):
    """10 inputs; input 9 is misclassified clean.

    Adv_max: linf attacks fool {0,1} and {1,2}; l1 attacks fool {3} (PGD) and {3,4} (pointwise);
    robust linf = {3..8} (6), l1 = {0,1,2,5,6,7,8} (7), union = {5..8} (4), average 0.65.
    Affine fools {5}: affine accuracy {0..4,6,7,8} = 8, union and affine = {6,7,8} = 3.
    Adv_inf: linf fools {0}: 8/10.  Adv_1: l1 fools nothing: 9/10.
    Budget 0.5 sweep of Adv_max: linf fools {0}, l1 fools {}.
    """
    clean = [True] * 9 + [False]
    write(tmp_path, MAX, PGD_INF, clean, {0, 1})
    write(tmp_path, MAX, FGSM_INF, clean, {1, 2})
    write(tmp_path, MAX, PGD_1, clean, {3})
    write(tmp_path, MAX, POINTWISE_1, clean, {3, 4})
    write(tmp_path, MAX, AFFINE, clean, {5})
    half_inf = AttackSpec("pgd_linf@0.5", "linf", "first-order", 0.3, budget=0.5)
    half_1 = AttackSpec("pgd_l1@0.5", "l1", "first-order", 10.0, budget=0.5)
    write(tmp_path, MAX, half_inf, clean, {0})
    write(tmp_path, MAX, half_1, clean, set())
    for attack in (PGD_INF, PGD_1):
        write(tmp_path, SINGLE_INF, attack, clean, {0} if attack.family == "linf" else {0, 1, 2})
        write(tmp_path, SINGLE_1, attack, clean, set() if attack.family == "l1" else {0, 1, 2, 3})
    return load_results(tmp_path)


def test_worst_case_union_average(hand_run):
    rows = hand_run.rows
    assert family_accuracy(rows, "m-max", "linf") == Estimate(6.0, 10)
    assert family_accuracy(rows, "m-max", "l1") == Estimate(7.0, 10)
    df = per_input(rows, "m-max", ["linf", "l1"])
    assert estimate(df["union"]) == Estimate(4.0, 10)
    assert estimate(df["average"]).value == pytest.approx(0.65)
    assert list(df.index[df["union"]]) == [5, 6, 7, 8]


def test_opt_bounds(hand_run):
    opt = opt_bounds(hand_run, "g")
    assert opt.complete
    assert opt.per_family["linf"] == ("m-inf", Estimate(8.0, 10))
    assert opt.per_family["l1"] == ("m-1", Estimate(9.0, 10))
    assert opt.union == pytest.approx(0.8)      # 1 - max(0.2, 0.1)
    assert opt.average == pytest.approx(0.85)   # 1 - mean(0.2, 0.1)


def test_group_table_values_and_masking_marks(hand_run):
    table = group_table(hand_run, "g")
    assert [r.display for r in table.rows] == ["Adv_inf", "Adv_1", "Adv_max"]
    assert table.columns == ["clean", "linf", "l1", "union", "average"]
    by = {r.display: r for r in table.rows}
    assert by["Adv_max"].cells["union"].estimate == Estimate(4.0, 10)
    assert by["Adv_inf"].cells["union"].estimate == Estimate(6.0, 10)  # robust {3..8}
    assert by["Adv_1"].cells["union"].estimate == Estimate(5.0, 10)    # robust {4..8}
    # 10 inputs are far too few for any difference to be significant: everyone is bold.
    assert all(r.cells["union"].bold for r in table.rows)
    assert by["Adv_max"].cells["l1"].masking is None  # 1 extra input: not significant


def test_affine_table(hand_run):
    (row,) = affine_rows(hand_run, "g")
    assert row.display == "Adv_max" and row.components == ("linf", "l1")
    assert row.union == Estimate(4.0, 10)
    assert row.affine == Estimate(8.0, 10)
    assert row.union_and_affine == Estimate(3.0, 10)


def test_sweep_curves(hand_run):
    curves = sweep_curves(hand_run, "g", "m-max")
    assert [(t, e.k) for t, e in curves.family["linf"]] == [(0.0, 9.0), (0.5, 8.0), (1.0, 6.0)]
    assert [(t, e.k) for t, e in curves.family["l1"]] == [(0.0, 9.0), (0.5, 9.0), (1.0, 7.0)]
    assert [(t, e.k) for t, e in curves.union] == [(0.0, 9.0), (0.5, 8.0), (1.0, 4.0)]
    assert curves.epsilon == {"linf": 0.3, "l1": 10.0}
    assert {(label, fam) for label, fam, _ in curves.references} == {("Adv_inf", "linf"),
                                                                      ("Adv_1", "l1")}
    assert sweep_curves(hand_run, "g", "m-inf") is None


def test_partial_shard_uses_only_inputs_every_attack_saw(tmp_path):
    clean = [True] * 10
    write(tmp_path, MAX, PGD_INF, clean, {0})
    write(tmp_path, MAX, PGD_1, clean[:5], {1}, n=5)  # l1 ran on inputs 0-4 only
    rs = load_results(tmp_path)
    df = per_input(rs.rows, "m-max", ["linf", "l1"])
    assert list(df.index) == [0, 1, 2, 3, 4]
    assert df["union"].sum() == 3


@pytest.mark.parametrize(
    ("extra", "fewer", "flagged"),
    [(12, 0, True), (3, 0, False), (10, 10, False), (0, 12, False)],
    ids=["masking", "too-few", "balanced", "first-order-stronger"],
)
def test_masking_flag(tmp_path, extra, fewer, flagged):
    n = 40
    clean = [True] * n
    first_fools = set(range(extra, extra + fewer)) | {39}
    other_fools = set(range(extra)) | {39}
    write(tmp_path, MAX, PGD_1, clean, first_fools, n=n)
    write(tmp_path, MAX, POINTWISE_1, clean, other_fools, n=n)
    rs = load_results(tmp_path)
    flag = masking_flag(rs.rows, rs.models["m-max"], "l1")
    assert (flag.extra, flag.fewer, flag.n) == (extra, fewer, n)
    assert flag.p_value == pytest.approx(binomial_one_sided(extra, fewer))
    assert flag.flagged is flagged
    assert flag.first_order == ("pgd_l1",)
    assert flag.attacks == ((("pointwise_l1", extra),) if extra else ())


def test_masking_needs_both_kinds(tmp_path):
    write(tmp_path, MAX, PGD_INF, [True] * 10, {0})
    rs = load_results(tmp_path)
    assert masking_flag(rs.rows, rs.models["m-max"], "linf") is None


def test_masking_mark_in_table(tmp_path):
    n = 40
    write(tmp_path, SINGLE_INF, PGD_INF, [True] * n, set(), n=n)
    write(tmp_path, SINGLE_INF, PGD_1, [True] * n, set(), n=n)
    write(tmp_path, SINGLE_INF, POINTWISE_1, [True] * n, set(range(15)), n=n)
    table = group_table(load_results(tmp_path), "g")
    cell = table.rows[0].cells["l1"]
    assert cell.estimate == Estimate(25.0, 40)
    assert cell.masking is not None and cell.masking.attacks == (("pointwise_l1", 15),)
    assert table.rows[0].cells["linf"].masking is None


def test_bold_uses_paired_mcnemar(tmp_path):
    """Best 30/40; a model right on a subset (24/40, 6 discordant, p = 0.031) is not bold
    although the Wilson intervals overlap; a model with 28/40 on other inputs is bold."""
    n = 40
    clean = [True] * n
    best = ModelSpec("a", "Adv_max", "max", ("linf", "l1"), ("g",))
    subset = ModelSpec("b", "Adv_avg", "avg", ("linf", "l1"), ("g",))
    other = ModelSpec("c", "Nat", "nat", (), ("g",))
    for model, fooled in ((best, set(range(30, 40))), (subset, set(range(24, 40))),
                          (other, set(range(0, 8)) | set(range(36, 40)))):
        write(tmp_path, model, PGD_INF, clean, fooled, n=n)
        write(tmp_path, model, PGD_1, clean, set(), n=n)
    table = group_table(load_results(tmp_path), "g")
    by = {r.display: r.cells["union"] for r in table.rows}
    assert by["Adv_max"].bold and by["Adv_max"].estimate.k == 30
    assert not by["Adv_avg"].bold
    assert by["Adv_avg"].estimate.high > by["Adv_max"].estimate.low  # intervals overlap
    assert by["Nat"].bold  # 28/40 with discordant 6 vs 8: not significant
    assert all(c.bold for c in (r.cells["clean"] for r in table.rows))


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(5, 10, 0.2366, 0.7634), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0),
     (52.4, 100, 0.4271, 0.6192)],
)
def test_wilson_interval(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert (lo, hi) == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))
    assert Estimate(k, n).interval == (lo, hi)


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError, match="k=11, n=10"):
        wilson_interval(11, 10)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [(0, 0, 1.0), (5, 5, 1.0), (10, 0, 2 * 0.5**10), (0, 10, 2 * 0.5**10), (6, 0, 0.03125),
     (1, 3, 0.625)],
)
def test_mcnemar_exact(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p)


def test_one_sided_and_sign_test():
    assert binomial_one_sided(12, 0) == pytest.approx(0.5**12)
    assert binomial_one_sided(0, 12) == pytest.approx(1.0)
    assert paired_sign_test([1, 1, 0.5, 0], [0, 0.5, 0.5, 0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        paired_sign_test([1, 0], [1])
