"""The QA half of the quality study: CE vs UA-CLM on a generated task, with a decoder trained from scratch.

    UE_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/study.py benchmarks/study_qa.yaml
    .venv/bin/python benchmarks/study.py benchmarks/study_qa.yaml --render-only   # rewrite its section only

``benchmarks/study.py`` hands a config with a ``qa`` section to :func:`main`. It writes the task of
``ue.synthetic_qa`` once (``<root>/data/synthetic_qa``) and one random decoder per seed. Each seed's
decoder is trained with CE first (pipeline ``qa-base-s<seed>``, a finetune stage only): the base model,
standing in for a pretrained LM, because UA-CLM alone cannot learn from random init. Then for every
loss and seed one pipeline runs through ``ue run`` from that base model (the same for every loss of a
seed, so losses compare pairwise): full-parameter fine-tune (``lora: null``) -> extract (greedy answers,
ROUGE-L correctness, mean token entropy, perplexity) -> ``fit_heads`` (msp, entropy, Mahalanobis + the
two scores). Then, per run, the OOD questions (SQuAD and TriviaQA from ``$UE_DATA_DIR``, without their
context) are answered by the fine-tuned model in this process and cached in ``<run>/ood.json``.

The page section between ``<!-- begin study: <config file name> -->`` and its end marker is replaced
(or appended); every other byte of the page stays as it was (:func:`splice_section`).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field

from ue.artifacts import Manifest, RunLayout, atomic_write_bytes
from ue.config import ConfigModel
from ue.config.paths import data_root
from ue.synthetic_qa import TaskSpec

REPO = Path(__file__).resolve().parents[1]
KINDS = ("easy", "rare", "two_hop", "ambiguous")
SCORES = {"token_entropy_mean": "mean token entropy", "perplexity": "perplexity", "mahalanobis": "Mahalanobis"}
"""The uncertainty scores of the tables (higher = more uncertain): two cached columns and one head."""
OOD_PAIRS = (("in-domain", "squad"), ("in-domain", "triviaqa"), ("squad", "triviaqa"))
"""(negatives, positives) of each OOD ROC-AUC."""
ANCHOR = {"ce": 0.6252, "ua_clm": 0.6955}
"""The paper's token-entropy AUROC (CoQA, Llama-2-7B, arXiv 2412.02904), standard fine-tune vs UA-CLM."""


class DecoderArgs(ConfigModel):
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4


class OODSet(ConfigModel):
    name: str
    split: str


class QASpec(ConfigModel):
    task: TaskSpec = Field(default_factory=TaskSpec, description="The generator's knobs (ue.synthetic_qa.TaskSpec).")
    decoder: DecoderArgs = Field(default_factory=DecoderArgs)
    losses: dict[str, dict[str, Any]] = Field(
        description="Label -> train.* keys that make the loss, e.g. {ua_clm: {loss: ua_clm}}.")
    base: dict[str, Any] = Field(
        default_factory=dict, description="train.* keys of the CE training from random init that makes each "
        "seed's base model (the stand-in for a pretrained LM: UA-CLM alone cannot learn from random init).")
    train: dict[str, Any] = Field(default_factory=dict, description="train.* keys of every loss's fine-tune.")
    max_length: int = 48
    max_new_tokens: int = 4
    ood: dict[str, OODSet] = Field(default_factory=dict)
    ood_rows: int = 300


class QAStudyConfig(ConfigModel):
    """benchmarks/study_qa.yaml."""

    root: str = "runs/study_qa"
    output: str = "docs/results.md"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    qa: QASpec


# -- the page -----------------------------------------------------------------------------------------
def markers(section: str) -> tuple[str, str]:
    return f"<!-- begin study: {section} -->", f"<!-- end study: {section} -->"


def splice_section(page: str, section: str, body: str) -> str:
    """``page`` with the marked ``section`` holding ``body``: replaced in place where the markers are,
    else appended after one blank line. Every byte outside the markers is kept."""
    begin, end = markers(section)
    block = f"{begin}\n{body.rstrip(chr(10))}\n{end}"
    start = page.find(begin)
    if start >= 0:
        stop = page.find(end, start)
        if stop < 0:
            raise ValueError(f"the page has {begin!r} but no {end!r}; restore the end marker")
        return page[:start] + block + page[stop + len(end):]
    return (page.rstrip("\n") + "\n\n" if page.strip() else "") + block + "\n"


def marked_tail(page: str) -> str:
    """Everything from the first ``<!-- begin study:`` marker on ("" when there is none): the sections
    another study config wrote, which the main study's render keeps after its own text."""
    start = page.find("<!-- begin study: ")
    return "" if start < 0 else page[start:]


# -- running ------------------------------------------------------------------------------------------
def data_dir(root: Path) -> Path:
    return root / "data" / "synthetic_qa"


def prepare(study: QAStudyConfig, root: Path) -> None:
    """The dataset and one decoder per seed, each written only once (an edit of the spec rewrites them)."""
    from ue.synthetic_qa import build_decoder, write_dataset

    spec = asdict(study.qa.task)
    stamp = root / "data" / "spec.json"
    if not stamp.is_file() or json.loads(stamp.read_text()) != spec:
        write_dataset(data_dir(root), study.qa.task)
        for old in (root / "models").glob("decoder-s*/config.json"):
            old.unlink()
        atomic_write_bytes(stamp, json.dumps(spec).encode())
    d = study.qa.decoder
    for seed in study.seeds:
        folder = root / "models" / f"decoder-s{seed}"
        if not (folder / "config.json").is_file():
            build_decoder(folder, data=data_dir(root), seed=seed, hidden_size=d.hidden_size, layers=d.layers,
                          heads=d.heads, max_positions=max(64, study.qa.max_length + study.qa.max_new_tokens))


def _finetune(study: QAStudyConfig, root: Path, model: dict[str, Any], train: dict[str, Any],
              seed: int) -> dict[str, Any]:
    train = {"select_metric": "val_loss", "keep_checkpoints": 1, **train, "seed": seed}
    return {"stage": "finetune", "config": {"data": _data(study, root), "model": model, "lora": None, "train": train,
                                            "resources": {"num_workers": 1, "cpus_per_worker": 1}}}


def _data(study: QAStudyConfig, root: Path) -> dict[str, Any]:
    return {"name": str(data_dir(root)), "task": "causal_lm",
            "splits": {"train": "train", "val": "validation", "test": "test"}, "max_length": study.qa.max_length}


def base_pipeline_doc(study: QAStudyConfig, seed: int, root: Path) -> dict[str, Any]:
    """The base model of ``seed``: CE from the random decoder, every weight trained."""
    model = {"name_or_path": str(root / "models" / f"decoder-s{seed}"), "task": "causal_lm"}
    return {"run_id": f"qa-base-s{seed}", "root": str(root), "retries": 1, "backoff_s": 5,
            "stages": [_finetune(study, root, model, {"loss": "ce", **study.qa.base}, seed)]}


def pipeline_doc(study: QAStudyConfig, loss: str, seed: int, root: Path) -> dict[str, Any]:
    """One loss and seed: fine-tune the seed's base model -> extract -> fit_heads."""
    qa = study.qa
    model = {"name_or_path": str(RunLayout(root, f"qa-base-s{seed}").adapter_dir), "task": "causal_lm"}
    return {
        "run_id": f"qa-{loss}-s{seed}", "root": str(root), "retries": 1, "backoff_s": 5,
        "stages": [
            _finetune(study, root, model, {**qa.train, **qa.losses[loss]}, seed),
            {"stage": "extract", "config": {"data": _data(study, root), "model": model, "adapter": "finetune",
                                            "batch_size": 64, "generation": {"max_new_tokens": qa.max_new_tokens},
                                            "resources": {"num_workers": 1, "cpus_per_worker": 1}}},
            {"stage": "fit_heads", "config": {"heads": [{"name": "msp"}, {"name": "entropy"},
                                                        {"name": "mahalanobis"}],
                                              "score_columns": ["token_entropy_mean", "perplexity"]}},
        ],
    }


def run_ids(study: QAStudyConfig) -> list[tuple[str, int, str]]:
    return [(loss, seed, f"qa-{loss}-s{seed}") for loss in study.qa.losses for seed in study.seeds]


def run_all(study: QAStudyConfig, root: Path) -> dict[str, float]:
    """``ue run`` every pipeline, then its OOD answers; the wall seconds of each."""
    prepare(study, root)
    ue = Path(sys.executable).with_name("ue")
    walls: dict[str, float] = {}
    docs = [base_pipeline_doc(study, seed, root) for seed in study.seeds]
    docs += [pipeline_doc(study, loss, seed, root) for loss, seed, _ in run_ids(study)]
    for doc in docs:
        path = root / "pipelines" / f"{doc['run_id']}.yaml"
        atomic_write_bytes(path, yaml.safe_dump(doc, sort_keys=False).encode())
        print(f"[study_qa] {doc['run_id']}: ue run {path}", flush=True)
        started = time.perf_counter()
        subprocess.run([str(ue), "run", str(path)], check=True)
        if not doc["run_id"].startswith("qa-base-"):
            ood_scores(study, RunLayout(root, doc["run_id"]))
        walls[doc["run_id"]] = time.perf_counter() - started
    return walls


# -- OOD ----------------------------------------------------------------------------------------------
def ood_questions(study: QAStudyConfig) -> dict[str, list[str]]:
    """The prompts of each OOD set: its questions without context, a seeded subset of ``ood_rows``."""
    from ue.data import load_split, qa_prompt, subsample

    out = {}
    for label, s in study.qa.ood.items():
        table = subsample(load_split(s.name, s.split, task="causal_lm", root=data_root()), study.qa.ood_rows, seed=0)
        out[label] = [qa_prompt(q) for q in table.column("question").to_pylist()]
    return out


def ood_scores(study: QAStudyConfig, layout: RunLayout) -> dict[str, dict[str, list[float]]]:
    """Per OOD set, each score of the fine-tuned model on its prompts; cached in ``<run>/ood.json``."""
    cache = layout.run_dir / "ood.json"
    key = {"ood": {k: v.model_dump() for k, v in study.qa.ood.items()}, "rows": study.qa.ood_rows,
           "max_new_tokens": study.qa.max_new_tokens}
    if cache.is_file() and (saved := json.loads(cache.read_text()))["key"] == key:
        return saved["scores"]
    import torch

    from ue.extraction import generate_answers
    from ue.feature_cache import feature_table
    from ue.heads import load_head
    from ue.models import load_model, load_tokenizer
    from ue.tokenize import collate, encode_causal

    model_dir = str(layout.adapter_dir)  # the whole model of a full-parameter fine-tune
    tok = load_tokenizer(model_dir, padding_side="left")
    model = load_model(model_dir, task="causal_lm", pad_token_id=tok.pad_token_id).eval()
    head = load_head(layout.head_dir("mahalanobis"))
    torch.manual_seed(0)
    scores = {}
    for label, prompts in ood_questions(study).items():
        encoded = encode_causal(tok, prompts, max_length=study.qa.max_length)
        gens = [generate_answers(model, tok, **collate(encoded[i:i + 64], pad_id=tok.pad_token_id,
                                                       padding_side="left"),
                                 max_new_tokens=study.qa.max_new_tokens) for i in range(0, len(encoded), 64)]
        hidden = np.concatenate([g.hidden for g in gens])
        n = len(hidden)
        table = feature_table(ids=[str(i) for i in range(n)], label=np.zeros(n, np.int64),
                              pred=np.ones(n, np.int64), logits=np.zeros((n, 2), np.float32), hidden=hidden)
        scores[label] = {"token_entropy_mean": np.concatenate([g.token_entropy_mean for g in gens]).tolist(),
                         "perplexity": np.concatenate([g.perplexity for g in gens]).tolist(),
                         "mahalanobis": np.asarray(head.uncertainty(table), dtype=float).tolist()}
    atomic_write_bytes(cache, json.dumps({"key": key, "scores": scores}).encode())
    return scores


# -- collecting ---------------------------------------------------------------------------------------
def collect_run(study: QAStudyConfig, layout: RunLayout, kinds: dict[str, str]) -> dict[str, Any]:
    """Test metrics of one run: accuracy, each score's hallucination-detection ROC-AUC (error = ROUGE-L
    <= the threshold), the ECE of ``1 / perplexity``, per-kind accuracy and ROC-AUC, OOD ROC-AUCs."""
    from ue.heads import load_head
    from ue.metrics import ece, roc_auc
    from ue.report import read_features

    test = read_features(layout, "test")
    correct = np.asarray(test["correct"].to_numpy(zero_copy_only=False), dtype=float)
    errors = 1.0 - correct
    scores = {"token_entropy_mean": test["token_entropy_mean"].to_numpy(),
              "perplexity": test["perplexity"].to_numpy(),
              "mahalanobis": np.asarray(load_head(layout.head_dir("mahalanobis")).uncertainty(test), dtype=float)}
    kind = np.array([kinds[i] for i in test["id"].to_pylist()])
    by_kind = {}
    for k in KINDS:
        mine = kind == k
        both = 0 < errors[mine].sum() < mine.sum()
        by_kind[k] = {"share": float(mine.mean()), "accuracy": float(correct[mine].mean()),
                      "roc_auc": roc_auc(scores["token_entropy_mean"][mine], errors[mine]) if both else None}
    ood = ood_scores(study, layout)
    groups = {"in-domain": scores, **ood}
    ood_auc = {f"{neg}|{pos}": {s: _separation(groups[neg][s], groups[pos][s]) for s in SCORES}
               for neg, pos in OOD_PAIRS if neg in groups and pos in groups}
    stages = Manifest(layout).read().get("stages", {})
    return {
        "accuracy": float(correct.mean()),
        "roc_auc": {s: roc_auc(v, errors) for s, v in scores.items()},
        "ece": ece(1.0 / test["perplexity"].to_numpy(), correct),
        "by_kind": by_kind, "ood": ood_auc,
        "seconds": {name: stages[name].get("seconds") for name in ("finetune", "extract", "fit_heads")
                    if name in stages},
    }


def _separation(negatives: Any, positives: Any) -> float:
    from ue.metrics import roc_auc

    values = np.concatenate([np.asarray(negatives, float), np.asarray(positives, float)])
    return roc_auc(values, np.r_[np.zeros(len(negatives)), np.ones(len(positives))])


def collect(study: QAStudyConfig, root: Path) -> dict[str, dict[int, dict[str, Any]]]:
    kinds = {}
    for line in (data_dir(root) / "test.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        kinds[row["id"]] = row["kind"]
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for loss, seed, run_id in run_ids(study):
        out.setdefault(loss, {})[seed] = collect_run(study, RunLayout(root, run_id), kinds)
    return out


# -- rendering ----------------------------------------------------------------------------------------
def _pm(values: list[float | None], scale: float = 100.0) -> str:
    v = np.array([np.nan if x is None else x for x in values], dtype=float) * scale
    if not np.isfinite(v).any():
        return "-"
    std = float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else 0.0
    return f"{np.nanmean(v):.2f} +- {std:.2f}"


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def render(study: QAStudyConfig, config_name: str, results: dict[str, dict[int, dict[str, Any]]],
           walls: dict[str, float], params: int, base: dict[int, float] | None = None) -> str:
    """The section's markdown; ``base``: each seed's base model's val token accuracy."""
    qa, t = study.qa, study.qa.task
    losses = list(results)
    shares = {k: _mean([r["by_kind"][k]["share"] for runs in results.values() for r in runs.values()]) for k in KINDS}
    lines = [
        "## QA / generation: CE vs UA-CLM on a generated task, decoder trained from scratch",
        "",
        f"Generated by `benchmarks/study.py benchmarks/{config_name}`; do not edit by hand (the rest of the page "
        "is another study's and stays as it is).",
        "",
        f"Task (`ue.synthetic_qa`, data seed {t.seed}): {t.n_entities} made-up creatures with a colour, food, "
        f"home and friend; training states every fact ({t.repeats} x 2 phrasings for common creatures, once for "
        f"the {100 * t.rare_share:.0f}% rare ones); test asks {t.n_test} questions: "
        + ", ".join(f"{k} {100 * shares[k]:.1f}%" for k in KINDS)
        + f". Hard = `rare` + `two_hop` (the friend's colour/home, never asked about that creature in training); "
        f"`ambiguous`: a creature that eats {t.ambiguity} foods, each equally often in training, the reference "
        "holds one of them drawn per row. Model: a Llama with a word-level tokenizer built on the generated text "
        f"({qa.decoder.layers} layers, width {qa.decoder.hidden_size}, {params:,} parameters), every weight "
        "trained (`lora: null`). Per seed, the random decoder is first trained with CE (the base model, the "
        "stand-in for a pretrained LM, since UA-CLM alone cannot learn from random init: "
        + ", ".join(f"{k}={v}" for k, v in qa.base.items())
        + "), then each loss fine-tunes that same base model ("
        + ", ".join(f"{k}={v}" for k, v in qa.train.items())
        + f"); seeds {', '.join(map(str, study.seeds))} (a seed changes the init, dropout and shuffle; the task "
        f"is the same). Greedy answers of at most {qa.max_new_tokens} tokens; "
        "correct = ROUGE-L > 0.3 against the reference; error = not correct.",
        "",
        "Losses: " + "; ".join(f"`{k}` = " + ", ".join(f"{a}={b}" for a, b in v.items())
                               for k, v in qa.losses.items())
        + " (`mix_ce`: CE + beta * UA-CLM, beta 0.2 for the first 20% of steps, then 0.8). "
        "Scores (higher = more uncertain): the answer's mean token entropy, its perplexity, and a Mahalanobis head "
        "on the last prompt token's hidden state (fitted on train). ECE: of the confidence `1 / perplexity` "
        "(the geometric-mean token probability, `ue.extraction.confidence_logits`) against correctness, 15 bins. "
        "All x100, mean +- std over seeds, on the test split.",
        "",
        "| loss | accuracy | ROC-AUC token entropy | ROC-AUC perplexity | ROC-AUC Mahalanobis | ECE (1/perplexity) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for loss in losses:
        runs = list(results[loss].values())
        cells = [_pm([r["accuracy"] for r in runs])] + [_pm([r["roc_auc"][s] for r in runs]) for s in SCORES]
        lines.append(f"| {loss} | " + " | ".join(cells) + f" | {_pm([r['ece'] for r in runs])} |")
    lines += ["", "Per item kind (share of test rows above): accuracy / token-entropy ROC-AUC within the kind "
              "(\"-\" where a kind has no error or no correct answer on every seed).", "",
              "| loss | " + " | ".join(KINDS) + " |", "|---|" + "---:|" * len(KINDS)]
    for loss in losses:
        runs = list(results[loss].values())
        cells = [" / ".join(_pm([r["by_kind"][k][m] for r in runs]) for m in ("accuracy", "roc_auc")) for k in KINDS]
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    lines += _ood_lines(study, results)
    lines += _anchor_lines(results)
    lines += ["", "Wall times (seconds, this machine, shared with other jobs):", "",
              "| run | finetune | extract | fit_heads | ue run + OOD answers |", "|---|---:|---:|---:|---:|"]
    for loss in losses:
        for seed, r in results[loss].items():
            s, wall = r["seconds"], walls.get(f"qa-{loss}-s{seed}")
            cells = " | ".join(f"{s.get(k) or 0:.0f}" for k in ("finetune", "extract", "fit_heads"))
            lines.append(f"| qa-{loss}-s{seed} | {cells} | {'-' if wall is None else f'{wall:.0f}'} |")
    if base:
        lines += ["", "Base models (CE from random init), val token accuracy of the exported epoch and the wall time "
                  "of their `ue run`: " + ", ".join(
                      f"seed {seed} {100 * acc:.1f}% ({_seconds(walls.get(f'qa-base-s{seed}'))})"
                      for seed, acc in base.items()) + "."]
    if "_total" in walls:
        lines += ["", f"Wall time of the last full QA study invocation: {walls['_total'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


def _ood_lines(study: QAStudyConfig, results: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    sets = ", ".join(f"{k} ({v.name} [{v.split}])" for k, v in study.qa.ood.items())
    lines = ["", f"OOD ROC-AUC: how well each score separates two sets of questions, the second counted positive "
             f"(0.5 = not at all). OOD sets: {sets}, {study.qa.ood_rows} questions each, without context, asked "
             "in the task's prompt form; most of their words are not in the decoder's vocabulary and read as `[UNK]`, "
             "so in-domain vs either is close to trivial for a score that sees the prompt, and SQuAD vs TriviaQA is "
             "the harder, real-text pair.", "",
             "| loss | " + " | ".join(f"{a} vs {b}: {SCORES[s]}" for a, b in OOD_PAIRS for s in SCORES) + " |",
             "|---|" + "---:|" * (len(OOD_PAIRS) * len(SCORES))]
    for loss, runs in results.items():
        cells = [_pm([r["ood"].get(f"{a}|{b}", {}).get(s) for r in runs.values()]) for a, b in OOD_PAIRS
                 for s in SCORES]
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return lines


def _anchor_lines(results: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """The paper's direction (token-entropy ROC-AUC up with UA-CLM) checked on ours, seed by seed."""
    if "ce" not in results:
        return []
    ce = results["ce"]
    lines = ["", f"Paper anchor (CoQA, Llama-2-7B, token-entropy ROC-AUC): CE {100 * ANCHOR['ce']:.2f} -> UA-CLM "
             f"{100 * ANCHOR['ua_clm']:.2f} ({100 * (ANCHOR['ua_clm'] - ANCHOR['ce']):+.2f}). Ours:", ""]
    for loss in (k for k in results if k != "ce"):
        seeds = [s for s in results[loss] if s in ce]
        diffs = np.array([results[loss][s]["roc_auc"]["token_entropy_mean"] - ce[s]["roc_auc"]["token_entropy_mean"]
                          for s in seeds]) * 100
        mean = float(diffs.mean())
        std = float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0
        up = int((diffs > 0).sum())
        if mean > 0 and up == len(diffs):
            verdict = "moves the same way as the paper on every seed"
        elif mean > 0:
            verdict = f"moves the same way on average but not on every seed ({up} of {len(diffs)} up)"
        else:
            verdict = f"**does not move the same way** as the paper ({up} of {len(diffs)} seeds up)"
        size = "within" if abs(mean) <= std else "beyond"
        acc = [100 * _mean([results[k][s]["accuracy"] for s in seeds]) for k in ("ce", loss)]
        lines.append(f"- `{loss}` vs `ce`: {mean:+.2f} +- {std:.2f} points (paired by seed: "
                     + ", ".join(f"{d:+.2f}" for d in diffs) + f"): {verdict}; the mean change is {size} one std "
                     f"of the per-seed changes. Accuracy {acc[0]:.2f}% -> {acc[1]:.2f}%"
                     + (": the two ROC-AUCs rank different sets of errors, so the change is not only a better score."
                        if abs(acc[1] - acc[0]) >= 5 else "."))
    return lines


def decoder_params(root: Path, seed: int) -> int:
    from safetensors import safe_open

    with safe_open(str(root / "models" / f"decoder-s{seed}" / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


def main(config: Path, *, render_only: bool) -> None:
    from ue.config import load_config

    study = load_config(QAStudyConfig, config)
    root = (REPO / study.root).resolve()
    walls_file = root / "walls.json"
    walls = json.loads(walls_file.read_text()) if walls_file.is_file() else {}
    if not render_only:
        started = time.perf_counter()
        walls.update(run_all(study, root))
        walls["_total"] = time.perf_counter() - started
        atomic_write_bytes(walls_file, json.dumps(walls, indent=2).encode())
    results = collect(study, root)
    base = {seed: json.loads((RunLayout(root, f"qa-base-s{seed}").finetune_dir / "metrics.json").read_text())
            ["best"]["val_accuracy"] for seed in study.seeds}
    body = render(study, config.name, results, walls, decoder_params(root, study.seeds[0]), base)
    output = REPO / study.output
    page = output.read_text(encoding="utf-8") if output.is_file() else ""
    atomic_write_bytes(output, splice_section(page, config.name, body).encode())
    (root / "results.json").write_text(json.dumps(results, indent=1, default=float))
    print(f"[study_qa] wrote the {config.name} section of {output}")
