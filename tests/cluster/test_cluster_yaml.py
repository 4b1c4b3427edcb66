"""cluster.yaml passes Ray's own cluster-launcher schema and has the node groups DESIGN.md names."""

from __future__ import annotations

import copy

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.cluster.helpers import ROOT


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config = prepare_config(copy.deepcopy(raw))  # what `ray up` does before validating: merge defaults
    validate_config(config)

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    cpu_workers = [name for name, t in types.items() if name != config["head_node_type"] and not t["resources"].get(
        "GPU")]
    assert len(gpu) == 1 and len(cpu_workers) == 1
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "~/ueray" in setup
    assert all("RAY_AUTH_MODE=token" in " ".join(config[k]) for k in ("head_start_ray_commands",
                                                                       "worker_start_ray_commands"))
