"""Benchmark of ``ue serve``: requests/s and p50/p99 latency at 1, 8 and 64 concurrent clients, next
to a plain FastAPI + transformers ``pipeline`` server in the same run.

Model: all-MiniLM-L6-v2 as a 2-label ``BertForSequenceClassification`` with its classifier
initialised from seed 0, saved as a checkpoint in a fresh run directory (only throughput is
measured, so a fine-tune adds nothing); heads msp and entropy; texts: SST-2 test sentences from
``$UE_DATA_DIR`` (synthetic sentences without it), one text per request, truncation at 128 tokens.

- ours: ``ue serve <run>`` in its own process (Ray started by it with ``--replicas`` CPUs, that many
  replicas each holding one ``ue.Scorer`` with one torch thread, ``@serve.batch`` of up to 64
  requests waiting at most 10 ms, forward passes of 16 rows of similar length), HTTP on 127.0.0.1;
  stopped with SIGTERM at the end, which also checks that it shuts down gracefully. One thread per
  replica: on cores shared with other work a 2-thread OpenMP pool in a replica was several times
  slower (2.4 against 6-9 requests/s at one client).
- baseline: one uvicorn process on 127.0.0.1 serving a FastAPI app whose POST handler calls
  ``pipeline("text-classification", top_k=None, truncation=True, max_length=128)`` on the request's
  text (one forward per request; sync handler, so FastAPI's thread pool runs several at once), torch
  with ``--baseline-threads`` threads (default: every core, torch's default; it measured faster here
  than one thread).

The client is aiohttp in this process: N tasks each sending one request after the other for
``--seconds`` (after a warm-up of 1 s); throughput is the requests completed in that window, latency
covers every request sent in it (also those finishing after it). Each level runs ``--repeats``
times, servers interleaved; medians are printed with the ratio at 64 clients. The client shares the
CPUs with the servers (and on a shared machine with whatever else runs there), so absolute figures
are noisy; the ratio is the figure to quote.

    nice -n 5 .venv/bin/python benchmarks/serve.py                # 3 repeats x 8 s per level
    nice -n 5 .venv/bin/python benchmarks/serve.py --quick        # 1 repeat x 4 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UE_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
ROOT = Path(__file__).resolve().parents[1]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LEVELS = (1, 8, 64)

BASELINE_APP = '''
import os, sys
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

classify = pipeline("text-classification", model=sys.argv[1], top_k=None, truncation=True, max_length=128,
                    device="cpu")
app = FastAPI()


class Body(BaseModel):
    texts: list[str]


@app.get("/healthz")
def health():
    return {"status": "ok"}


@app.post("/")
def score(body: Body):
    return {"rows": classify(body.texts)}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def texts(n: int = 2000) -> list[str]:
    path = Path(os.environ["UE_DATA_DIR"]) / "sst2" / "test.jsonl"
    if path.is_file():
        return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()][:n]
    words = ("good", "bad", "film", "plot", "boring", "great", "actors", "slow", "funny", "dull", "the", "a")
    return [" ".join(words[(i * 7 + k * 3) % len(words)] for k in range(4 + i % 12)) for i in range(n)]


def make_run(folder: Path) -> Path:
    """A run directory whose model is MiniLM with a seeded 2-label classifier, saved as a checkpoint."""
    from ue.models import load_model, load_tokenizer

    model_dir = folder / "minilm-2labels"
    model = load_model(MINILM, task="sequence_classification", num_labels=2, seed=0)
    model.save_pretrained(model_dir)
    load_tokenizer(MINILM).save_pretrained(model_dir)
    (folder / "runs" / "bench").mkdir(parents=True)
    return model_dir


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


def stop(proc: subprocess.Popen, timeout: float = 60) -> float:
    """SIGTERM, then wait; returns the seconds the shutdown took (SIGKILL after ``timeout``)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return float("inf")
    return time.monotonic() - started


async def load(url: str, corpus: list[str], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` tasks sending one text per request back to back for 1 s of warm-up plus ``seconds``.

    Throughput: requests completed inside the timed window over its length. Latency: every request
    sent inside the window, including those still in flight at its end (the clients wait for them),
    so a slow tail is not cut off.
    """
    import aiohttp

    latencies: list[float] = []
    completed = errors = 0
    warmup_end = time.perf_counter() + 1.0
    end = warmup_end + seconds

    async def client(k: int, session: aiohttp.ClientSession) -> None:
        nonlocal completed, errors
        i = k
        while (sent := time.perf_counter()) < end:
            async with session.post(url, json={"texts": [corpus[i % len(corpus)]]}) as answer:
                await answer.read()
                ok = answer.status == 200
            done = time.perf_counter()
            if sent >= warmup_end:
                latencies.append(done - sent)
                errors += not ok
            completed += warmup_end <= done <= end
            i += clients

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        await asyncio.gather(*(client(k, session) for k in range(clients)))
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {"rps": completed / seconds, "p50_ms": pick(0.5), "p99_ms": pick(0.99), "errors": errors,
            "n": len(latencies)}


def start_ours(model_dir: Path, run_dir: Path, port: int, replicas: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "UE_LOG_LEVEL": "WARNING"}
    args = [sys.executable, "-m", "cluster.cli", "serve", str(run_dir), "--port", str(port), "--num-cpus",
            str(replicas), "--replicas", str(replicas), f"model.name_or_path={model_dir}", "adapter=null",
            "heads=[msp,entropy]", "max_batch_size=64", "batch_wait_timeout_s=0.01", "replicas.cpus_per_replica=1"]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def start_baseline(model_dir: Path, port: int, threads: int, folder: Path) -> subprocess.Popen:
    script = folder / "baseline_app.py"
    script.write_text(BASELINE_APP, encoding="utf-8")
    env = {**os.environ, "BENCH_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, str(script), str(model_dir), str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="timed window per level and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=os.cpu_count() or 1, help="ue serve replicas (1 thread each)")
    parser.add_argument("--baseline-threads", type=int, default=os.cpu_count() or 1, help="baseline torch threads")
    parser.add_argument("--quick", action="store_true", help="1 repeat of 4 s per level")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats = 4.0, 1
    sys.path.insert(0, str(ROOT))
    corpus = texts()
    results: dict[str, dict[int, list[dict[str, float]]]] = {"ours": {n: [] for n in LEVELS},
                                                              "baseline": {n: [] for n in LEVELS}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_dir = make_run(folder)
        servers = {}
        for name in ("ours", "baseline"):
            port = free_port()
            started = time.monotonic()
            proc = (start_ours(model_dir, folder / "runs" / "bench", port, args.replicas) if name == "ours"
                    else start_baseline(model_dir, port, args.baseline_threads, folder))
            servers[name] = (proc, f"http://127.0.0.1:{port}")
            wait_ready(servers[name][1], proc)
            print(f"{name}: ready in {time.monotonic() - started:.1f}s", flush=True)
        try:
            for repeat in range(args.repeats):
                for clients in LEVELS:
                    for name in ("ours", "baseline") if repeat % 2 == 0 else ("baseline", "ours"):
                        stats = asyncio.run(load(servers[name][1], corpus, clients, args.seconds))
                        results[name][clients].append(stats)
                        print(f"repeat {repeat + 1} {name:8s} {clients:3d} clients: {stats['rps']:7.1f} req/s, "
                              f"p50 {stats['p50_ms']:7.1f} ms, p99 {stats['p99_ms']:7.1f} ms, "
                              f"{stats['errors']} errors", flush=True)
        finally:
            shutdown = {name: stop(proc) for name, (proc, _) in servers.items()}
    print(f"\nmedians of {args.repeats} run(s) of {args.seconds:g} s; ours: {args.replicas} replica(s) x 1 torch "
          f"thread, baseline: {args.baseline_threads} torch thread(s)")
    print(f"{'clients':>7}  {'ours req/s':>10} {'p50':>7} {'p99':>7}  {'base req/s':>10} {'p50':>7} {'p99':>7}  ratio")
    med = {name: {n: {k: statistics.median(r[k] for r in runs[n]) for k in ("rps", "p50_ms", "p99_ms")}
                  for n in LEVELS} for name, runs in results.items()}
    for n in LEVELS:
        o, b = med["ours"][n], med["baseline"][n]
        print(f"{n:7d}  {o['rps']:10.1f} {o['p50_ms']:7.1f} {o['p99_ms']:7.1f}  {b['rps']:10.1f} {b['p50_ms']:7.1f} "
              f"{b['p99_ms']:7.1f}  {o['rps'] / b['rps']:5.2f}x")
    o, b = med["ours"][64], med["baseline"][64]
    print(f"\nat 64 clients: {o['rps'] / b['rps']:.2f}x the baseline's throughput (target >= 2x); p99 "
          f"{o['p99_ms']:.0f} ms vs {b['p99_ms']:.0f} ms ({'no worse' if o['p99_ms'] <= b['p99_ms'] else 'WORSE'})")
    print(f"shutdown on SIGTERM: ours {shutdown['ours']:.1f}s, baseline {shutdown['baseline']:.1f}s")


if __name__ == "__main__":
    main()
