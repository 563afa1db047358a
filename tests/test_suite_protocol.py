"""One protocol per family: suite-level budgets and radius ranges add copies of every attack of a
family; a suite whose budget points use different attacks within a family is refused unless it
says budgets_protocol: reduced; copies cascade across radii; the metadata states all of it."""

from __future__ import annotations

import pytest

from jobs.suite import ConfigError, parse_suite

LINF = {"type": "linf", "epsilon": 0.3, "k": 4}
SQUARE = {"type": "autoattack", "attack": "square", "norm": "linf", "epsilon": 0.3, "n_queries": 10}
L1 = {"type": "l1", "epsilon": 10.0, "k": 4}
POINTWISE = {"type": "foolbox", "attack": "pointwise_l1", "epsilon": 10.0, "init_steps": 10}
RT = {"type": "rt", "grid_granularity": [3, 3, 3]}


def mnist_suite(attacks: list[dict], **top) -> object:
    return parse_suite({"name": "p", "dataset": "mnist", "attacks": attacks, **top}, source="p.yaml")


def entry(name: str, spec: dict, kind: str = "first-order", **extra) -> dict:
    return {"name": name, "kind": kind, "spec": spec, **extra}


def points(suite, base: str) -> list[float]:
    return sorted(a.budget for a in suite.attacks if a.base == base)


def test_suite_level_budgets_give_every_attack_of_the_family_the_same_points():
    suite = mnist_suite([entry("pgd", LINF), entry("square", SQUARE, "gradient-free"),
                         entry("slide", L1)], budgets={"linf": [0.25, 0.5]})
    assert points(suite, "pgd") == points(suite, "square") == [0.25, 0.5, 1.0]
    assert points(suite, "slide") == [1.0]
    half = suite.attack("square@0.5")
    assert half.spec.to_dict()["epsilon"] == pytest.approx(0.15) and half.base == "square"
    assert half.below == "square@0.25" and half.after == ("square@0.25",)
    assert suite.attack("pgd@0.25").below is None
    # a list applies to every family
    both = mnist_suite([entry("pgd", LINF), entry("slide", L1)], budgets=[0.5])
    assert points(both, "pgd") == points(both, "slide") == [0.5, 1.0]
    meta = both.to_dict()
    assert meta["budgets_protocol"] == "full" and meta["radii"] == {}
    assert meta["full_radius"] == {"linf": 0.3, "l1": 10.0}
    assert [(a["name"], a["base"]) for a in meta["attacks"]] == [
        ("pgd", "pgd"), ("pgd@0.5", "pgd"), ("slide", "slide"), ("slide@0.5", "slide")]


def test_budget_points_that_differ_within_a_family_are_refused_unless_reduced():
    attacks = [entry("pgd", LINF, budgets=[0.25, 0.5]), entry("square", SQUARE, "gradient-free")]
    with pytest.raises(ConfigError, match=r"p.yaml: field 'attacks\[1\].budgets': family 'linf': "
                       r"attack 'pgd' runs at budgets \[0.25, 0.5, 1\] but 'square' at \[1\]; .*"
                       r"budgets_protocol: reduced"):
        mnist_suite(attacks)
    reduced = mnist_suite(attacks, budgets_protocol="reduced")
    assert points(reduced, "pgd") == [0.25, 0.5, 1.0] and points(reduced, "square") == [1.0]
    assert reduced.to_dict()["budgets_protocol"] == "reduced"
    # other families are free to have no points at all
    mnist_suite([entry("pgd", LINF, budgets=[0.5]), entry("slide", L1)])


def test_radius_ranges_add_copies_at_each_radius_beyond_the_full_budget_too():
    suite = mnist_suite([entry("pgd", LINF), entry("square", SQUARE, "gradient-free"),
                         entry("rt", RT, "grid")],
                        radii={"linf": [0, 0.4, 0.1], "rt": [0.5, 1.5, 0.5]})
    assert suite.radii == {"linf": [0.0, 0.1, 0.2, 0.3, 0.4], "rt": [0.5, 1.0, 1.5]}
    assert points(suite, "pgd") == points(suite, "square") == pytest.approx([1 / 3, 2 / 3, 1.0, 4 / 3])
    eps = {a.name: a.spec.to_dict()["epsilon"] for a in suite.attacks if a.base == "pgd"}
    assert sorted(eps.values()) == pytest.approx([0.1, 0.2, 0.3, 0.4])  # radius 0: no attack
    assert points(suite, "rt") == [0.5, 1.0, 1.5]
    assert suite.attack("rt@1.5").spec.to_dict()["spatial_limits"] == pytest.approx([4.5, 4.5, 45.0])
    # copies chain upwards, the full-budget attack included
    ascending = sorted((a for a in suite.attacks if a.base == "pgd"), key=lambda a: a.budget)
    assert [a.below for a in ascending] == [None, *(a.name for a in ascending[:-1])]
    assert suite.to_dict()["radii"] == {"linf": [0.0, 0.1, 0.2, 0.3, 0.4], "rt": [0.5, 1.0, 1.5]}
    # radii and budgets that meet are one point
    merged = mnist_suite([entry("pgd", LINF)], budgets=[0.5], radii={"linf": [0.15, 0.15, 0.1]})
    assert points(merged, "pgd") == [0.5, 1.0]


@pytest.mark.parametrize(("top", "match"), [
    ({"radii": {"l2": [0, 1, 0.5]}}, r"field 'radii.l2': the suite has no attack of family 'l2'"),
    ({"radii": {"linf": [0.4, 0.1, 0.1]}}, r"field 'radii.linf'.*0 <= start <= stop and step > 0"),
    ({"radii": {"linf": [0, 1, 0]}}, r"field 'radii.linf'.*step > 0"),
    ({"radii": {"linf": [0, 100, 0.001]}}, r"field 'radii.linf'.*more than 200 radii"),
    ({"budgets": {"l2": [0.5]}}, r"field 'budgets.l2': the suite has no attack of family 'l2'"),
    ({"budgets": [0]}, r"field 'budgets\[0\]' = 0: Input should be greater than 0$"),
    ({"budgets": 0.5}, r"field 'budgets' = 0.5: Input should be a valid list or a valid dictionary$"),
    ({"budgets_protocol": "partial"}, r"field 'budgets_protocol'"),
], ids=["family", "order", "step", "count", "budget-family", "budget-range", "budget-type",
        "protocol"])
def test_bad_points_are_refused(top, match):
    with pytest.raises(ConfigError, match=match):
        mnist_suite([entry("pgd", LINF)], **top)


def test_a_budget_may_exceed_the_full_ball():
    """The format says budgets are fractions of the full ball that may exceed 1."""
    suite = mnist_suite([entry("pgd", LINF)], budgets=[0.5, 1.5])
    eps = {a.name: a.spec.epsilon for a in suite.attacks}
    assert eps == pytest.approx({"pgd": 0.3, "pgd@0.5": 0.15, "pgd@1.5": 0.45})


def test_a_radius_range_needs_one_full_radius_per_family():
    other = {**LINF, "epsilon": 0.2}
    with pytest.raises(ConfigError, match=r"radii.linf'.*different radii \[0.2, 0.3\]"):
        mnist_suite([entry("a", LINF), entry("b", other)], radii={"linf": [0.1, 0.2, 0.1]})


def test_minimum_norm_copies_threshold_their_smaller_copy_and_cascades_stay_in_their_ball():
    suite = mnist_suite([entry("slide", L1), entry("pw", POINTWISE, "gradient-free"),
                         entry("apgd", {"type": "autoattack", "attack": "apgd-ce", "norm": "l1",
                                        "epsilon": 10.0, "n_iter": 5})],
                        budgets=[0.5], cascade=True)
    assert not suite.attack("pw@0.5").thresholds and suite.attack("pw").thresholds
    assert suite.attack("pw").below == "pw@0.5"
    assert not suite.attack("slide").thresholds  # its search depends on the radius
    # within a radius: after the same ball's earlier attacks of the same kind
    assert suite.attack("apgd@0.5").after == ("slide@0.5",)
    assert suite.attack("apgd").after == ("apgd@0.5", "slide")
    # cascade: false on an attack also attacks every input at every radius
    alone = mnist_suite([entry("slide", L1, cascade=False)], budgets=[0.5])
    assert alone.attack("slide").after == () and alone.attack("slide").below == "slide@0.5"


def test_autoattack_standard_spec():
    from jobs.attacks import AttackSpecError, make_attack

    spec = {"type": "autoattack", "version": "standard", "norm": "l1", "epsilon": 10}
    attack = make_attack(spec)
    assert attack.spec == {**spec, "epsilon": 10.0} and attack.family == "l1"
    # APGD-CE 5 x 100, APGD-T 5 targets x 100 (l_1), FAB-T 9 x 100, Square 5000
    assert attack.total_steps == 500 + 500 + 900 + 5000
    suite = mnist_suite([entry("aa", spec)], budgets=[0.5])
    assert suite.attack("aa@0.5").spec.to_dict()["epsilon"] == 5.0
    assert suite.attack("aa").own_labels() == ("aa", "apgd-ce", "apgd-t", "fab-t", "square")
    for bad, match in (({**spec, "version": "plus"}, r"'version': must be one of \['standard'\]"),
                       ({**spec, "attack": "apgd-ce"}, r"'attack': unknown key"),
                       ({**spec, "n_queries": 10}, r"'n_queries': unknown key"),
                       ({**spec, "norm": "l0"}, r"'norm': must be one of")):
        with pytest.raises(AttackSpecError, match=match):
            make_attack(bad)
