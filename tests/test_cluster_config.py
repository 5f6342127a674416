"""cluster.yaml: valid for Ray's own cluster launcher (checked offline) and secure by default."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_validates_against_rays_schema(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))  # merged with Ray's AWS defaults, as `ray up` does
    validate_config(prepared)  # raises jsonschema.ValidationError on any mismatch
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    gpus = {name: t["resources"].get("GPU") for name, t in types.items() if name != "head"}
    assert sorted(gpus.values()) == [1, 4]  # a single-GPU and a multi-GPU worker type
    for t in types.values():  # the schema wants integers; Ray's scheduler would misread floats
        assert all(type(v) is int for v in t["resources"].values()), t["resources"]
    assert all(t.get("max_workers", 0) >= 1 and t.get("min_workers", 0) == 0
               for name, t in types.items() if name != "head")  # autoscaling from zero


def test_cluster_yaml_installs_the_project_and_stores_results_on_s3(config):
    setup = "\n".join(config["setup_commands"])
    assert "pip install -e ~/raytune_ft" in setup and config["file_mounts"]["~/raytune_ft"] == "."
    assert re.search(r"RAYTUNE_FT_STORAGE=s3://", setup)


def test_cluster_yaml_security_defaults(config):
    text = CLUSTER_YAML.read_text()
    commands = [*config["head_start_ray_commands"], *config["worker_start_ray_commands"]]
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)  # token authentication on
    assert "disabled" not in text.lower()
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "--dashboard-host=127.0.0.1" in starts[0]
    assert "0.0.0.0" not in " ".join(commands) and "--ray-client-server-port" not in text
    # With SecurityGroupIds on every node type Ray never creates its default group (which opens
    # SSH to 0.0.0.0/0) and adds no rules; the documented group admits SSH from YOUR_CIDR only.
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"].get("SecurityGroupIds"), name
    assert "security_group" not in config["provider"]
    ingress = [line for line in text.splitlines() if "authorize-security-group-ingress" in line]
    assert any("--port 22 --cidr YOUR_CIDR" in line for line in ingress)
    assert all("--cidr" not in line or "--port 22 --cidr YOUR_CIDR" in line for line in ingress)
    assert all("--source-group raytune-ft" in line for line in ingress if "--cidr" not in line)
    for value in ("region", "ImageId", "KeyName", "SecurityGroupIds", "RAYTUNE_FT_STORAGE", "YOUR_CIDR"):
        assert value in text.split("cluster_name:")[0], f"the header comment does not name {value}"
