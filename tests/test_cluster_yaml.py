"""cluster.yaml passes Ray's own offline validation and installs mpo with shared storage."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private import util

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_passes_rays_validation(config):
    prepared = util.prepare_config(copy.deepcopy(config))
    util.validate_config(prepared)
    gpu = prepared["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert prepared["head_node_type"] == "head"


def test_rejects_a_broken_copy(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    # Ray validates against its JSON schema and lets jsonschema's error through
    with pytest.raises(jsonschema.ValidationError, match=r"many|max_workers|type") as err:
        util.validate_config(util.prepare_config(broken))
    assert list(err.value.path) == ["available_node_types", "gpu_worker", "max_workers"]


def test_installs_mpo_and_mounts_shared_storage(config):
    assert "/home/ubuntu/mpo" in config["file_mounts"]
    setup = " ".join(config["setup_commands"])
    assert "-e /home/ubuntu/mpo" in setup and "ray[default,tune]" in setup
    assert "mount -t nfs4" in setup and "/mnt/mpo" in setup
    assert any("mpo data fetch" in c for c in config["head_setup_commands"])
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "CHANGE" in CLUSTER_YAML.read_text()
