"""Acceptance on real data: with MiniLM on SST-2, the rows the score stage accepts keep their error
rate at or below the target on a held-out labelled set.

The classifier: all-MiniLM-L6-v2 frozen, its classification layer fitted by logistic regression on
the pooled features of 2,000 SST-2 training sentences (a quick stand-in for the finetune stage; about
70% accurate, so errors are common). The threshold is calibrated on the 872 validation sentences;
the corpus is the 1,821 test sentences, whose labels the job never sees.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.schemas.score import Config
from jobs.score import run
from tests.jobs.score_run import model_features, write_features
from tests.tiny import MINILM
from ue.artifacts import RunLayout
from ue.config import load_config
from ue.scoring import read_scores

DATA = Path(os.environ.get("UE_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data")
TARGET_ERROR, DELTA, MIN_ACCEPTED = 0.15, 0.1, 100

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DATA / "sst2").is_dir(), reason=f"no SST-2 under {DATA} (set UE_DATA_DIR)")]


def _rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / "sst2" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def _fit_classifier(directory: Path, train: list[dict]) -> str:
    """MiniLM with its classifier fitted by logistic regression on the pooler's output, saved."""
    from sklearn.linear_model import LogisticRegression

    from ue.models import load_model, load_tokenizer

    tok, model = load_tokenizer(MINILM), load_model(MINILM, task="sequence_classification", num_labels=2).eval()
    hidden = torch.from_numpy(model_features(model, tok, [r["text"] for r in train])["hidden"])
    with torch.no_grad():
        pooled = model.bert.pooler.activation(model.bert.pooler.dense(hidden)).numpy()
    lr = LogisticRegression(C=10.0, max_iter=2000).fit(pooled, [r["label"] for r in train])
    with torch.no_grad():  # softmax([0, w.x + b]) = (1 - sigmoid, sigmoid): the logistic regression exactly
        model.classifier.weight.copy_(torch.tensor(np.stack([np.zeros_like(lr.coef_[0]), lr.coef_[0]])))
        model.classifier.bias.copy_(torch.tensor([0.0, lr.intercept_[0]]))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


def test_accepted_rows_of_a_held_out_set_keep_the_target_error_rate(tmp_path: Path, ray_local: None):
    torch.manual_seed(0)
    train = [r for k, r in enumerate(_rows("train_sentences")) if k % 3 == 0][:2000]
    model_dir = _fit_classifier(tmp_path / "model", train)
    layout = RunLayout(tmp_path / "runs", "sst2")
    val = _rows("validation")
    write_features(layout, model_dir, [r["text"] for r in val], np.array([r["label"] for r in val]))

    cfg = load_config(Config, data={
        "run": {"root": str(tmp_path / "runs"), "run_id": "sst2"},
        "corpus": {"paths": [str(DATA / "sst2" / "test.jsonl")], "max_length": 64, "rows_per_block": 512},
        "model": {"name_or_path": model_dir, "num_labels": 2},
        "heads": ["msp", "entropy"],
        "accept": {"head": "msp", "target_error": TARGET_ERROR, "delta": DELTA, "min_accepted": MIN_ACCEPTED},
        "resources": {"num_workers": 1, "cpus_per_worker": 2},
    })
    summary = run(cfg)

    test = _rows("test")
    scores = read_scores(layout.scores_dir).to_pandas()
    assert summary["scored"] == len(scores) == len(test) and summary["quarantined"] == 0
    label = np.array([test[int(i.rsplit(":", 1)[1]) - 1]["label"] for i in scores["id"]])
    wrong = scores["pred"].to_numpy() != label
    accepted = scores["accept"].to_numpy()
    print(f"accuracy {1 - wrong.mean():.3f}; accepted {accepted.mean():.1%} of the test rows with error "
          f"{wrong[accepted].mean():.4f} (target {TARGET_ERROR}); calibration: {summary['threshold']}")
    assert wrong.mean() > 0.2  # the model errs often, so the decision has something to keep out
    assert accepted.mean() > 0.1  # and the threshold still accepts a useful share
    assert wrong[accepted].mean() <= TARGET_ERROR
