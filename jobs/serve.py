"""Serve a run's model and heads over HTTP with Ray Serve: the online twin of ``jobs.score``.

    ue serve runs/minilm-sst2 heads=[alien,msp] accept.head=alien
    python -m jobs.serve --config serve.yaml run.run_id=minilm-sst2

Each replica holds one ``ue.Scorer`` (the code path of ``jobs.score``), so a row served here has the
columns and values that batch scoring gives the same text. ``@serve.batch`` joins concurrent
requests into one scoring call (``max_batch_size``, ``batch_wait_timeout_s``), which is where the
throughput over a one-request-per-forward server comes from.

HTTP API (bound to 127.0.0.1 unless ``http.host`` says otherwise):

- ``POST /`` (or ``/score``) with ``{"texts": [...]}``, ``{"pairs": [[a, b], ...]}`` or, for a
  token-classification model, ``{"sentences": [...]}``; optional ``"ids"`` of the same length.
  Answers ``{"rows": [...]}``, one object per input in order.
- ``GET /healthz``: ``{"status": "ok", "columns": [...]}`` once the replica has loaded its model.
- Errors are JSON ``{"error": "..."}``: 400 malformed body, 422 wrong types or empty values, 413 too
  many items, too long a text or too big a body, 404/405 other paths and methods. Request bodies
  are never logged.

The stage runs until Ctrl-C or SIGTERM (what ``ue stop`` sends a Ray Job), then shuts Serve down
(replicas finish the requests they hold) and, if it started Ray, Ray too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ray import serve

from jobs._common import adapter_dir, init_ray, job_main
from jobs.schemas.serve import Config
from ue.artifacts import RunLayout
from ue.scorer import AUTO

log = logging.getLogger("ue.jobs.serve")
INPUT_KEYS = ("texts", "pairs", "sentences")


class RequestError(ValueError):
    """A bad request: ``status`` is the HTTP status to answer with, the message names the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Inputs:
    """One request's rows: texts, second texts of pairs (or None) and ids (or None)."""

    texts: list[str]
    pairs: list[str] | None
    ids: list[str] | None


def parse_request(body: bytes, *, token_task: bool, max_items: int, max_text_chars: int,
                  max_body_bytes: int) -> Inputs:
    """The inputs of a POST body, or a :class:`RequestError` naming the first problem (its message
    quotes no text of the request)."""
    if len(body) > max_body_bytes:
        raise RequestError(413, f"the body has {len(body):,} bytes; at most {max_body_bytes:,} are accepted")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"the body is not JSON ({type(exc).__name__} at position "
                                f"{getattr(exc, 'pos', getattr(exc, 'start', '?'))})") from None
    if not isinstance(doc, dict):
        raise RequestError(400, f"the body must be a JSON object such as {{\"texts\": [...]}}, not "
                                f"{type(doc).__name__}")
    unknown = sorted(set(doc) - {*INPUT_KEYS, "ids"})
    if unknown:
        raise RequestError(400, f"unknown key(s) {', '.join(map(repr, unknown))}; known: "
                                f"{', '.join(INPUT_KEYS)}, ids")
    given = [k for k in INPUT_KEYS if k in doc]
    wanted = ("sentences",) if token_task else ("texts", "pairs")
    if len(given) != 1 or given[0] not in wanted:
        raise RequestError(400, f"give exactly one of {' or '.join(map(repr, wanted))} (this model is a "
                                f"{'token' if token_task else 'sequence'}-classification model); got "
                                f"{', '.join(map(repr, given)) or 'none'}")
    key = given[0]
    items = doc[key]
    if not isinstance(items, list) or not items:
        raise RequestError(422, f"{key!r} must be a non-empty list")
    if len(items) > max_items:
        raise RequestError(413, f"{key!r} has {len(items):,} items; at most {max_items:,} per request")
    texts, pairs = [], [] if key == "pairs" else None
    for i, item in enumerate(items):
        parts = item if key == "pairs" else [item]
        if key == "pairs" and (not isinstance(item, list) or len(item) != 2):
            raise RequestError(422, f"pairs[{i}] must be a list of two strings, not {type(item).__name__}")
        for part in parts:
            if not isinstance(part, str):
                raise RequestError(422, f"{key}[{i}] must be a string, not {type(part).__name__}")
            if not part.strip():
                raise RequestError(422, f"{key}[{i}] is empty")
            if len(part) > max_text_chars:
                raise RequestError(413, f"{key}[{i}] has {len(part):,} characters; at most {max_text_chars:,}")
        texts.append(parts[0])
        if pairs is not None:
            pairs.append(parts[1])
    ids = doc.get("ids")
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(items)
                            or not all(isinstance(i, str) for i in ids)):
        raise RequestError(422, f"'ids' must be a list of {len(items)} strings, one per item of {key!r}")
    return Inputs(texts, pairs, ids)


def make_scorer(cfg: Config, *, device: str | None = None) -> Any:
    """The ``ue.Scorer`` that ``cfg`` describes (model and adapter from the run unless given)."""
    from ue.scorer import Scorer

    layout = RunLayout(cfg.run.root, cfg.run.run_id)
    model = cfg.model
    given = {} if model is None else {
        "model": model.name_or_path, "task": model.task, "num_labels": model.num_labels, "dtype": model.dtype,
        "trust_remote_code": model.trust_remote_code, "allow_new_weights": model.allow_new_weights,
        "init_seed": model.init_seed}
    adapter = cfg.adapter if cfg.adapter in (None, AUTO) else adapter_dir(cfg.adapter, layout)
    return Scorer.from_run(layout.run_dir, heads=cfg.heads, ood=cfg.ood,
                           accept=None if cfg.accept is None else cfg.accept.model_dump(), adapter=adapter,
                           tag_names=cfg.tag_names, max_length=cfg.max_length, max_chars=cfg.max_text_chars,
                           batch_size=cfg.batch_size, device=device, **given)


class ScoringService:
    """A Ray Serve replica: one scorer, a JSON API, and request batching."""

    def __init__(self, config: dict[str, Any]) -> None:
        import torch

        self.cfg = Config.model_validate(config)
        torch.set_num_threads(max(1, int(self.cfg.replicas.cpus_per_replica)))
        self.scorer = make_scorer(self.cfg, device="cuda" if self.cfg.replicas.use_gpu else "cpu")
        self._score_batch.set_max_batch_size(self.cfg.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        path, method = request.url.path.rstrip("/") or "/", request.method
        if path == "/healthz":
            if method != "GET":
                return JSONResponse({"error": "use GET /healthz"}, status_code=405)
            return JSONResponse({"status": "ok", "columns": self.scorer.columns})
        if path not in ("/", "/score"):
            return JSONResponse({"error": f"no route {path}; POST / with {{\"texts\": [...]}}, GET /healthz"},
                                status_code=404)
        if method != "POST":
            return JSONResponse({"error": f"use POST {path} with a JSON body"}, status_code=405)
        cfg = self.cfg
        try:
            inputs = parse_request(await request.body(), token_task=self.scorer.tokens, max_items=cfg.max_items,
                                   max_text_chars=cfg.max_text_chars, max_body_bytes=int(cfg.max_body_mb * 2**20))
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        try:
            rows = await self._score_batch(inputs)
        except Exception as exc:  # the request's text may be in the error: log its type only
            log.error("scoring a request failed: %s", type(exc).__name__)
            return JSONResponse({"error": f"scoring failed ({type(exc).__name__})"}, status_code=500)
        return JSONResponse({"rows": rows})

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _score_batch(self, requests: list[Inputs]) -> list[list[dict[str, Any]]]:
        """One scoring call per kind (single texts, pairs) for every request in the batch; the
        forward runs in a thread so the replica keeps taking requests for the next batch meanwhile."""
        out: list[list[dict[str, Any]]] = [[] for _ in requests]
        for with_pairs in (False, True):
            group = [k for k, r in enumerate(requests) if (r.pairs is not None) == with_pairs]
            if group:
                rows = await asyncio.to_thread(self._score_group, [requests[k] for k in group])
                for k, part in zip(group, rows, strict=True):
                    out[k] = part
        return out

    def _score_group(self, requests: Sequence[Inputs]) -> list[list[dict[str, Any]]]:
        texts = [t for r in requests for t in r.texts]
        pairs = None if requests[0].pairs is None else [p for r in requests for p in r.pairs]
        ids = [i for r in requests for i in (r.ids if r.ids is not None else map(str, range(len(r.texts))))]
        rows = self.scorer.score_rows(texts, pairs, ids=ids)
        out, start = [], 0
        for r in requests:
            out.append(rows[start:start + len(r.texts)])
            start += len(r.texts)
        return out


def build_app(cfg: Config) -> Any:
    """The Serve application: ``num_replicas`` replicas of :class:`ScoringService` (one per GPU of the
    cluster when ``use_gpu`` and no count is given)."""
    import ray

    replicas = cfg.replicas
    num = replicas.num_replicas or (max(1, int(ray.cluster_resources().get("GPU", 0))) if replicas.use_gpu else 1)
    options = {"num_cpus": replicas.cpus_per_replica, "num_gpus": 1 if replicas.use_gpu else 0}
    deployment = serve.deployment(ScoringService, name="scorer", num_replicas=num, ray_actor_options=options,
                                  max_ongoing_requests=max(64, 4 * cfg.max_batch_size))
    return deployment.bind(cfg.model_dump(mode="json"))


def start(cfg: Config) -> str:
    """Start Serve's HTTP proxy at ``cfg.http`` and deploy the app (Ray must be running); returns its URL."""
    logging_config = {"enable_access_log": cfg.access_log}
    serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port}, logging_config=logging_config)
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/", blocking=False, logging_config=logging_config)
    return f"http://{cfg.http.host}:{cfg.http.port}"


def run(cfg: Config) -> dict[str, Any]:
    """Serve until Ctrl-C or SIGTERM, then shut down; returns the URL and the seconds served."""
    import ray

    started = init_ray()
    since, url = time.monotonic(), ""
    stop = threading.Event()
    previous = _on_sigterm(stop)
    try:
        url = start(cfg)
        log.info("serve: run %s at %s (POST / {\"texts\": [...]}, GET /healthz); Ctrl-C to stop", cfg.run.run_id,
                 url)
        while not stop.wait(1.0):
            pass
        log.info("serve: SIGTERM, shutting down")
    except KeyboardInterrupt:
        log.info("serve: interrupted, shutting down")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        serve.shutdown()
        if started:
            ray.shutdown()
    return {"url": url, "seconds": round(time.monotonic() - since, 1)}


def _on_sigterm(stop: threading.Event) -> Any:
    """Turn SIGTERM into ``stop`` (main thread only); returns the handler it replaced, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda *_: stop.set())


if __name__ == "__main__":
    job_main(Config, run)
