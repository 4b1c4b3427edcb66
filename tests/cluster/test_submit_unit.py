"""What `ue submit` sends, checked without a cluster: command line, runtime_env, resources."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from cluster.pipeline import EntrypointResources, load_pipeline
from cluster.submit import REPO_ROOT, runtime_env, stage_entrypoint
from jobs._common import parse_args
from tests.cluster.helpers import write_pipeline
from ue.config import config_hash, load_config


def test_the_job_rebuilds_exactly_the_config_the_driver_validated(tmp_path: Path):
    message = "it's \"quoted\", has spaces, [brackets] and {braces}: 1e-05"
    pipe = load_pipeline(write_pipeline(tmp_path / "p.yaml", "u1", tmp_path, [
        {"stage": "toy_a", "config": {"message": message, "seconds": 1e-5}},
        {"stage": "report", "config": {"heads": ["msp", "alien"], "title": None}},
    ]))
    for stage in pipe.stages:
        argv = shlex.split(stage_entrypoint(stage))
        assert argv[:3] == ["python", "-m", stage.impl.module] and argv[3:3 + len(stage.impl.argv)] == list(
            stage.impl.argv)
        args = parse_args(argv[3 + len(stage.impl.argv):], stage.name)  # what job_main does on the cluster
        rebuilt = load_config(stage.impl.config_class(), args.config, overrides=args.overrides)
        assert rebuilt == stage.cfg and config_hash(rebuilt) == config_hash(stage.cfg)
    assert pipe.stages[0].cfg.message == message


def test_runtime_env_uploads_the_repo_without_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("UE_DATA_DIR", "/data/root")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "must-not-travel")
    monkeypatch.delenv("HF_HOME", raising=False)
    pipe = load_pipeline(write_pipeline(tmp_path / "p.yaml", "u2", tmp_path, [{"stage": "toy_a"}],
                                        submit={"env_vars": {"EXTRA": "1"}, "pip": ["rich"], "excludes": ["big/"]}))
    env = runtime_env(pipe)
    assert env["working_dir"] == str(REPO_ROOT)
    assert {"/.git", "/.venv", "/runs", "/data", "big/"} <= set(env["excludes"])
    assert env["env_vars"]["UE_DATA_DIR"] == "/data/root" and env["env_vars"]["EXTRA"] == "1"
    assert "HF_HOME" not in env["env_vars"] and "must-not-travel" not in repr(env)
    assert env["pip"] == ["rich"]


def test_entrypoint_resources_map_to_ray_arguments():
    assert EntrypointResources().as_submit_kwargs() == {}
    assert EntrypointResources(num_cpus=1, num_gpus=0.5, memory_gb=2, custom={"gpu_node": 0.01}).as_submit_kwargs() == {
        "entrypoint_num_cpus": 1, "entrypoint_num_gpus": 0.5, "entrypoint_memory": 2 * 2**30,
        "entrypoint_resources": {"gpu_node": 0.01}}


def test_an_address_without_a_ray_dashboard_is_reported_as_such():
    import http.server
    import threading

    from cluster.submit import ClusterClient, ClusterUnreachable

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ClusterUnreachable, match="does not serve the Ray Jobs API"):
            ClusterClient(f"http://127.0.0.1:{server.server_port}", None)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ClusterUnreachable, match="no Ray dashboard answers"):
        ClusterClient(f"http://127.0.0.1:{server.server_port}", None)
