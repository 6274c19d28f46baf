"""DESIGN.md: every file in deploy/ is data, and a test loads each one."""

import pathlib
import re

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"


def test_every_deploy_file_loads():
    files = sorted(p for p in DEPLOY.iterdir() if p.suffix in (".yaml", ".yml"))
    assert files, "deploy/ has no cluster specs"
    for path in files:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_ray_cluster_spec_labels_every_host_and_runs_token_auth_everywhere():
    spec = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    head = " ".join(spec["head_start_ray_commands"])
    workers = " ".join(spec["worker_start_ray_commands"])
    assert "--num-cpus=0" in head  # the head runs no domains
    assert re.search(r'xen-host\\?"?: \\?"\$H', workers) and "xen-host-$H" in workers
    for commands in (head, workers):  # one token on every node (DESIGN.md "Security")
        assert "RAY_AUTH_MODE=token" in commands and "RAY_AUTH_TOKEN_PATH=" in commands
    assert "~/.xenray/auth_token" in spec["file_mounts"]
    assert spec["min_workers"] == len(spec["provider"]["worker_ips"])
