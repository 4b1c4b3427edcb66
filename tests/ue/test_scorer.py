"""ue.Scorer on a tiny BERT run: loads the run's model and heads once, scores texts into the columns
of a score shard with the heads' own values, accepts at the calibrated threshold, and refuses bad use."""

from __future__ import annotations

import numpy as np
import pytest

import ue
from tests.jobs.score_run import model_features, sentences, write_scoring_run
from tests.tiny import save_tiny_model
from ue.feature_cache import part_files
from ue.heads import load_head
from ue.heads._math import msp_np
from ue.scoring import calibrate


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("scorer")
    model_dir = str(save_tiny_model(tmp / "model", "bert", "sequence_classification"))
    layout = write_scoring_run(tmp / "runs", "r", model_dir, n_val=80)
    return {"model": model_dir, "layout": layout}


def test_from_run_scores_with_the_heads_values_and_the_calibrated_threshold(run):
    import pyarrow.parquet as pq

    from ue.models import load_model, load_tokenizer

    layout = run["layout"]
    scorer = ue.Scorer.from_run(layout.run_dir, heads=["alien", "msp"], ood="mahalanobis",
                                accept={"head": "alien", "target_error": 0.45, "delta": 0.2}, max_length=64,
                                device="cpu")
    texts = sentences(9, seed=4)
    table = scorer.score(texts)
    assert table.column_names == scorer.columns == ["id", "pred", "confidence", "u_alien", "u_msp", "ood",
                                                     "accept", "truncated"]
    assert table["id"].to_pylist() == [str(i) for i in range(9)]

    model = load_model(run["model"], task="sequence_classification", num_labels=2).eval()
    own = model_features(model, load_tokenizer(run["model"]), texts)
    np.testing.assert_array_equal(table["pred"].to_numpy(), own["pred"])
    np.testing.assert_allclose(table["u_msp"].to_numpy(), msp_np(own["logits"]), rtol=1e-5)
    np.testing.assert_allclose(table["confidence"].to_numpy() + table["u_msp"].to_numpy(), 1.0)
    alien = load_head(layout.head_dir("alien"))
    np.testing.assert_allclose(table["u_alien"].to_numpy(), alien.uncertainty(own), rtol=1e-4)
    threshold = calibrate(alien, pq.read_table(part_files(layout.features_split_dir("val"))), target_error=0.45,
                          delta=0.2)
    assert scorer.threshold.threshold == pytest.approx(threshold.threshold)
    np.testing.assert_array_equal(table["accept"].to_numpy(), table["u_alien"].to_numpy() <= threshold.threshold)
    assert not table["truncated"].to_numpy().any()

    rows = scorer.score_rows(["good film " * 40, texts[0]], ids=["long", "short"])
    assert [r["id"] for r in rows] == ["long", "short"] and [r["truncated"] for r in rows] == [True, False]
    assert rows[1]["u_alien"] == pytest.approx(table["u_alien"][0].as_py(), rel=1e-6)
    assert scorer.score([]).num_rows == 0


def test_bad_use_gets_a_clear_error(run, tmp_path):
    layout = run["layout"]
    with pytest.raises(FileNotFoundError, match="run the fit_heads stage"):
        ue.Scorer.from_run(layout.run_dir, heads=["adue"])
    with pytest.raises(ValueError, match="accept.head 'alien' is not in heads"):
        ue.Scorer.from_run(layout.run_dir, heads=["msp"], accept={"head": "alien"})
    with pytest.raises(ValueError, match="unknown key"):
        ue.Scorer.from_run(layout.run_dir, heads=["msp"], accept={"target": 0.1})
    with pytest.raises(ValueError, match="only hold for the model they were fitted on"):
        ue.Scorer.from_run(layout.run_dir, model=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pass model="):
        ue.Scorer.from_run(tmp_path / "empty-run")
    scorer = ue.Scorer.from_run(layout.run_dir, heads=["msp"], device="cpu")
    with pytest.raises(ValueError, match="must have the same length"):
        scorer.score(["a", "b"], ids=["only-one"])
