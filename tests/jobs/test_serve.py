"""ue serve end to end on a tiny BERT run: the same texts through ue.Scorer, a real local Ray Serve app
(over HTTP) and the score stage give identical columns; bad requests get JSON 4xx answers and no
request text reaches the logs."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.schemas.score import Config as ScoreConfig
from jobs.schemas.serve import Config as ServeConfig
from jobs.serve import RequestError, parse_request
from tests.jobs.score_run import sentences, write_scoring_run
from tests.tiny import save_tiny_model
from ue.config import ConfigError, load_config

HEADS = {"heads": ["alien", "msp"], "ood": "mahalanobis", "accept": {"head": "alien", "target_error": 0.45,
                                                                     "delta": 0.2}}
MARKER = "zebra-unlogged-marker"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A scored run, then its Serve app on 127.0.0.1 at a free port (Serve and Ray shut down after)."""
    import ray
    from ray import serve

    from jobs.score import run as score
    from jobs.serve import start

    tmp = tmp_path_factory.mktemp("serve")
    model_dir = str(save_tiny_model(tmp / "model", "bert", "sequence_classification"))
    layout = write_scoring_run(tmp / "runs", "r", model_dir, n_val=80)
    texts = [*sentences(11, seed=7), "good film " * 40]  # the last one is cut at max_length
    (tmp / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    run = {"root": str(tmp / "runs"), "run_id": "r"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        score(load_config(ScoreConfig, data={"run": run, "model": {"name_or_path": model_dir}, **HEADS,
                                             "corpus": {"paths": [str(tmp / "corpus.jsonl")], "max_length": 32}}))
        cfg = load_config(ServeConfig, data={"run": run, **HEADS, "max_length": 32, "max_items": 20,
                                             "max_text_chars": 500, "http": {"port": _free_port()}})
        url = start(cfg)
        yield {"url": url, "texts": texts, "layout": layout, "cfg": cfg}
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_scorer_http_and_the_score_stage_give_identical_columns(served):
    import requests

    from jobs.serve import make_scorer
    from ue.scoring import read_scores

    texts, ids = served["texts"], [f"corpus.jsonl:{i}" for i in range(1, len(served["texts"]) + 1)]
    batch = read_scores(served["layout"].scores_dir).to_pylist()
    scorer = make_scorer(served["cfg"], device="cpu")
    local = scorer.score_rows(texts, ids=ids)
    answer = requests.post(served["url"], json={"texts": texts, "ids": ids}, timeout=60)
    assert answer.status_code == 200, answer.text
    online = answer.json()["rows"]
    assert list(online[0]) == ["id", "pred", "confidence", "u_alien", "u_msp", "ood", "accept", "truncated"]
    assert online == local == batch
    assert [r["truncated"] for r in online] == [False] * 11 + [True]
    assert 0 < sum(r["accept"] for r in online) < len(online)
    # Padding to another batch's length moves the floats by rounding only; the same batch gives the same bits.
    two = requests.post(f"{served['url']}/score", json={"texts": texts[:2]}, timeout=60).json()["rows"]
    assert two == scorer.score_rows(texts[:2])
    np.testing.assert_allclose([r["u_msp"] for r in two], [r["u_msp"] for r in local[:2]], rtol=1e-6)

    pairs = {"pairs": [[a, b] for a, b in zip(texts[:4], texts[4:8], strict=True)]}
    paired = requests.post(served["url"], json=pairs, timeout=60).json()["rows"]
    assert paired == scorer.score_rows(texts[:4], texts[4:8]) and paired != scorer.score_rows(texts[:4])

    health = requests.get(f"{served['url']}/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["columns"][1:3] == ["pred", "confidence"]


@pytest.mark.slow
def test_bad_requests_get_json_errors_and_their_text_is_not_logged(served):
    import ray
    import requests

    url = served["url"]
    cases = [
        (b"not json", 400, "not JSON"),
        (json.dumps({"texts": MARKER}).encode(), 422, "non-empty list"),
        (json.dumps({"texts": []}).encode(), 422, "non-empty list"),
        (json.dumps({"texts": [MARKER, 3]}).encode(), 422, "texts[1] must be a string"),
        (json.dumps({"texts": ["a"] * 21}).encode(), 413, "at most 20 per request"),
        (json.dumps({"texts": [MARKER * 40]}).encode(), 413, "at most 500"),
        (json.dumps({"sentences": [MARKER]}).encode(), 400, "exactly one of 'texts' or 'pairs'"),
    ]
    for body, status, message in cases:
        answer = requests.post(url, data=body, headers={"content-type": "application/json"}, timeout=30)
        assert answer.status_code == status and message in answer.json()["error"], (body[:40], answer.text)
        assert MARKER not in answer.text
    assert requests.get(url, timeout=10).status_code == 405
    assert requests.get(f"{url}/nowhere", timeout=10).status_code == 404
    assert requests.post(url, json={"texts": [MARKER]}, timeout=60).status_code == 200
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    assert not [p for p in logs.rglob("*") if p.is_file() and MARKER.encode() in p.read_bytes()]


def test_parse_request_checks_shape_types_and_limits():
    limits = {"token_task": False, "max_items": 3, "max_text_chars": 10, "max_body_bytes": 200}
    got = parse_request(b'{"pairs": [["a b", "c"]], "ids": ["x"]}', **limits)
    assert (got.texts, got.pairs, got.ids) == (["a b"], ["c"], ["x"])
    assert parse_request(b'{"sentences": ["EU rejects"]}', **{**limits, "token_task": True}).texts == ["EU rejects"]
    bad = {b"[1]": (400, "JSON object"), b'{"texts": ["a"], "extra": 1}': (400, "unknown key(s) 'extra'"),
           b'{"texts": ["  "]}': (422, "texts[0] is empty"), b'{"pairs": [["a"]]}': (422, "two strings"),
           b'{"texts": ["a"], "ids": [1]}': (422, "'ids' must be a list of 1 strings"),
           b'{"texts": ["' + b"a" * 300 + b'"]}': (413, "at most 200 are accepted")}
    for body, (status, message) in bad.items():
        with pytest.raises(RequestError, match=re.escape(message)) as caught:
            parse_request(body, **limits)
        assert caught.value.status == status


def test_serve_config_checks_itself_and_binds_to_loopback():
    cfg = load_config(ServeConfig, data={})
    assert (cfg.http.host, cfg.replicas.num_replicas) == ("127.0.0.1", None)
    for change, message in (({"http": {"port": 0}}, "must be in"), ({"max_batch_size": 0}, "must be >= 1"),
                            ({"heads": ["msp"], "accept": {"head": "alien"}}, "not in heads")):
        with pytest.raises(ConfigError, match=message):
            load_config(ServeConfig, data=change)
    assert np.isfinite(cfg.batch_wait_timeout_s)


def test_ue_serve_refuses_a_missing_run_and_a_bad_key_with_exit_code_2(tmp_path):
    from typer.testing import CliRunner

    from cluster.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["serve", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "is not a run directory" in missing.output
    bad = runner.invoke(app, ["serve", str(tmp_path), "http.prot=80"])
    assert bad.exit_code == 2 and "http.prot: unknown key" in bad.output
