"""What a trial reserves, and what the driver refuses before starting anything (no Ray needed)."""

from __future__ import annotations

import pytest

from jobs.errors import MpoError
from orchestrator.resources import Cluster, check_resources, make_resources
from orchestrator.runfolder import describe_changes


def resources(**kw):
    args = dict(gpus_per_trial=None, cpus_per_trial=1.0, eval_workers=1, eval_cpus=1.0,
                eval_gpus=None, cluster_gpus=0.0)
    return make_resources(**{**args, **kw})


@pytest.mark.parametrize(
    ("kw", "bundles"),
    [
        ({}, [{"CPU": 1.0}, {"CPU": 1.0}]),
        ({"cluster_gpus": 4}, [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 0.5}]),
        ({"cluster_gpus": 4, "gpus_per_trial": 0}, [{"CPU": 1.0}, {"CPU": 1.0}]),
        ({"eval_workers": 0}, [{"CPU": 1.0}]),
        ({"eval_workers": 2, "eval_cpus": 0.5, "cpus_per_trial": 0.5},
         [{"CPU": 0.5}, {"CPU": 0.5}, {"CPU": 0.5}]),
        ({"gpus_per_trial": 1, "eval_gpus": 0.25, "eval_workers": 2},
         [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 0.25}, {"CPU": 1.0, "GPU": 0.25}]),
    ],
    ids=["cpu-cluster", "gpu-cluster", "gpus-off", "no-eval-workers", "fractions", "eval-gpus"],
)
def test_bundles(kw, bundles):
    assert resources(**kw).bundles() == bundles


AUTO = {"cpus_per_trial": None, "eval_cpus": None}


@pytest.mark.parametrize(
    ("kw", "bundles"),
    [
        ({}, [{"CPU": 0.5}, {"CPU": 0.5}]),
        ({"cluster_gpus": 4}, [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 0.5}]),
        ({"eval_workers": 0}, [{"CPU": 1.0}]),
        ({"eval_workers": 2}, [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}]),
        ({"cpus_per_trial": 2.0}, [{"CPU": 2.0}, {"CPU": 1.0}]),
        ({"eval_cpus": 0.25}, [{"CPU": 1.0}, {"CPU": 0.25}]),
    ],
    ids=["cpu-only-shares-one-cpu", "gpu-cluster", "no-eval-workers", "two-eval-workers",
         "trial-cpus-given", "eval-cpus-given"],
)
def test_default_cpus(kw, bundles):
    """Without CPU counts, a CPU-only trial with one evaluation worker reserves one CPU in all
    (it trains or evaluates, never both); every other layout gets 1 CPU per bundle."""
    assert resources(**{**AUTO, **kw}).bundles() == bundles


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"cpus_per_trial": 0}, "--cpus-per-trial 0: must be > 0"),
        ({"eval_workers": -1}, "--eval-workers -1: must be >= 0"),
        ({"gpus_per_trial": 1.5}, "--gpus-per-trial 1.5: above 1, a whole number"),
        ({"eval_cpus": -1}, "--cpus-per-eval-worker -1: must be a number >= 0"),
    ],
    ids=["cpus", "workers", "gpus", "eval-cpus"],
)
def test_bad_resources(kw, match):
    with pytest.raises(MpoError, match=match):
        resources(**kw)


def test_check_resources_refuses_what_would_wait_forever():
    cpu_only = Cluster(False, "127.0.0.1:6379", None, {"CPU": 2.0}, None, {"CPU": 2.0})
    with pytest.raises(MpoError, match=r"has no GPUs.*--gpus-per-trial 0"):
        check_resources(resources(gpus_per_trial=1), cpu_only)
    with pytest.raises(MpoError, match="largest node"):
        check_resources(resources(cpus_per_trial=4), cpu_only)
    with pytest.raises(MpoError, match="in all"):
        check_resources(resources(eval_workers=3), cpu_only)
    check_resources(resources(), cpu_only)
    # an autoscaling cluster with GPU workers yet to start: GPUs are allowed
    autoscaling = Cluster(False, "a", None, {"CPU": 2.0}, {"CPU": 34.0, "GPU": 8.0}, {"CPU": 2.0})
    check_resources(resources(gpus_per_trial=1, cpus_per_trial=4), autoscaling)


def test_describe_changes_names_trials():
    old = {"trials": {"a": {"label": "Nat", "groups": ["g"], "attacks": ["x"]}}, "groups": {}}
    new = {"trials": {"b": {"label": "Adv_inf", "groups": ["g"], "attacks": ["x"]},
                      "a": {"label": "Nat", "groups": ["g", "h"], "attacks": ["x"]}},
           "groups": {}}
    lines = describe_changes(old, new)
    assert "new trial Adv_inf (b)" in lines
    assert "trial a: groups ['g'] -> ['g', 'h']" in lines
    assert describe_changes(old, old) == []
