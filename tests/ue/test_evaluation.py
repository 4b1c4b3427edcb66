"""ue.evaluation: every metric of one score, the confidence each head is judged by, the table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ue.evaluation import evaluate_scores, format_table


@pytest.fixture
def split():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 3)) * 2
    pred = logits.argmax(1)
    label = np.where(rng.random(200) < 0.3, (pred + 1) % 3, pred)
    return {"pred": pred, "label": label, "logits": logits}


def test_error_detection_metrics_judge_the_score_against_pred_ne_label(split):
    scores = np.random.default_rng(1).random(200)
    out = evaluate_scores(scores, error_probability=False, **split)
    errors = split["pred"] != split["label"]
    assert out["n"] == 200 and out["error_rate"] == pytest.approx(errors.mean())
    assert out["accuracy"] == pytest.approx(1 - errors.mean())
    assert out["roc_auc"] == pytest.approx(roc_auc_score(errors, scores))
    assert out["oracle_aurc"] <= out["aurc"]
    perfect = evaluate_scores(errors.astype(float), error_probability=True, **split)
    assert perfect["roc_auc"] == 1.0 and perfect["prr"] == pytest.approx(1.0)
    assert perfect["aurc"] == pytest.approx(perfect["oracle_aurc"])


def test_error_probability_heads_are_calibrated_on_one_minus_u_the_others_on_max_prob(split):
    correct = (split["pred"] == split["label"]).astype(float)
    u = np.full(200, 0.25)
    own = evaluate_scores(u, error_probability=True, **split)
    # One bin holds every row at confidence 0.75: ECE = |accuracy - 0.75|.
    assert own["confidence"] == "1-U"
    assert own["ece"] == pytest.approx(abs(correct.mean() - 0.75))
    assert own["brier"] == pytest.approx(np.mean((0.75 - correct) ** 2))
    assert own["nll"] == pytest.approx(-np.mean(np.where(correct == 1, np.log(0.75), np.log(0.25))))
    model = evaluate_scores(u, error_probability=False, **split)
    p = np.exp(split["logits"]) / np.exp(split["logits"]).sum(1, keepdims=True)
    assert model["confidence"] == "max_prob"
    assert model["brier"] == pytest.approx(np.mean((p.max(1) - correct) ** 2))


def test_the_table_prints_heads_as_rows_and_metrics_x100():
    rows = {"msp": {"accuracy": 0.9, "roc_auc": 0.8512, "aurc": 0.05, "prr": math.nan, "ece": 0.012},
            "relative_mahalanobis": {"accuracy": 0.9, "roc_auc": 0.7, "aurc": 0.07, "prr": 0.3, "ece": 0.012}}
    text = format_table(rows, title="test split")
    lines = text.splitlines()
    assert lines[0] == "test split (all x100)"
    assert lines[1].split() == ["head", "accuracy", "ROC-AUC", "AURC", "PRR", "ECE"]
    assert lines[3].split() == ["msp", "90.00", "85.12", "5.00", "-", "1.20"]
    assert lines[4].split()[0] == "relative_mahalanobis"
