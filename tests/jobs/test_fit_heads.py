"""jobs.fit_heads on a small synthetic feature cache: every head fitted, saved and scored row by row,
the calibration split, test rows kept out of fitting, and errors that name the file and column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch

from jobs import fit_heads
from jobs.schemas.fit_heads import DEFAULT_HEADS, Config
from ue.artifacts import RunLayout, atomic_write_json
from ue.config import ConfigError, load_config
from ue.data import id_share
from ue.evaluation import evaluate_scores
from ue.feature_cache import feature_table, part_path, write_part
from ue.features import MissingColumnError, column
from ue.heads import HEADS, Alien, Calibrated, Mahalanobis, load_classifier, load_head, save_classifier
from ue.heads.modules import Classifier, ClassifierSpec
from ue.registry import UnknownNameError

REPO = Path(__file__).resolve().parents[2]
ROWS = {"train": 400, "val": 160, "test": 160}
D, C = 16, 3
QUICK = {"alien": {"epochs": 3}, "adue": {"epochs": 3}}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def write_features(root: Path, *, test_seed: int = 3) -> RunLayout:
    """A cache as jobs.extract writes it: parts of 64 rows, features.json, the classifier."""
    layout = RunLayout(root, "r")
    torch.manual_seed(0)
    clf = Classifier(ClassifierSpec("linear", D, C)).eval()
    with torch.no_grad():
        clf.out_proj.weight.mul_(3.0)
    for split, seed in (("train", 1), ("val", 2), ("test", test_seed)):
        rng = np.random.default_rng(seed)
        hidden = rng.normal(size=(ROWS[split], D)).astype(np.float32)
        with torch.no_grad():
            logits = clf(torch.from_numpy(hidden)).numpy()
        label = (logits + 1.5 * rng.normal(size=logits.shape)).argmax(1)
        for k, start in enumerate(range(0, ROWS[split], 64)):
            rows = slice(start, start + 64)
            table = feature_table(ids=[f"{split}-{i}" for i in range(ROWS[split])][rows], label=label[rows],
                                  pred=logits[rows].argmax(1), logits=logits[rows], hidden=hidden[rows])
            write_part(table, part_path(layout.features_split_dir(split), k))
    save_classifier(clf, layout.features_dir)
    atomic_write_json(layout.features_meta, {"task": "sequence_classification", "num_labels": C, "hidden_size": D,
                                             "classifier": "linear"})
    return layout


def config(root: Path, heads: list[str], **overrides) -> Config:
    entries = [{"name": h, "params": QUICK.get(h, {})} for h in heads]
    return load_config(Config, data={"run": {"root": str(root), "run_id": "r"}, "heads": entries}, overrides=overrides)


def split_table(layout: RunLayout, split: str):
    return pq.read_table(layout.features_split_dir(split))


def test_every_head_is_fitted_saved_and_scored_row_by_row(local_ray, tmp_path, capsys):
    layout = write_features(tmp_path)
    fit_heads.run(config(tmp_path, list(DEFAULT_HEADS)))
    report = json.loads((layout.stage_dir("fit_heads") / "metrics.json").read_text())
    test = split_table(layout, "test")
    truth = {c: column(test, c) for c in ("pred", "label", "logits")}
    for name in DEFAULT_HEADS:
        head = load_head(layout.head_dir(name))
        again = evaluate_scores(head.uncertainty(test), error_probability=head.error_probability, **truth)
        assert report["metrics"]["test"][name] == pytest.approx(again, nan_ok=True)  # scores matched their rows
        assert report["metrics"]["val"][name]["n"] == ROWS["val"]
        assert report["heads"][name]["fit_seconds"] >= 0
    assert set(report["metrics"]["test"]["alien"]) >= {"accuracy", "roc_auc", "aurc", "oracle_aurc", "prr", "ece",
                                                         "brier", "nll"}
    assert report["metrics"]["test"]["entropy"]["confidence"] == "max_prob"
    assert report["metrics"]["test"]["alien"]["confidence"] == "1-U"
    assert len(load_head(layout.head_dir("alien")).history_) == 3  # selected on val, epoch by epoch
    printed = capsys.readouterr().out
    assert all(name in printed for name in DEFAULT_HEADS) and "ROC-AUC" in printed


def test_test_rows_never_reach_fitting_or_selection(local_ray, tmp_path):
    heads = ["temperature", "mahalanobis", "alien"]
    first, second = write_features(tmp_path / "a"), write_features(tmp_path / "b", test_seed=99)
    fit_heads.run(config(tmp_path / "a", heads))
    fit_heads.run(config(tmp_path / "b", heads))
    for name in heads:
        a, b = (layout.head_dir(name) / "head.safetensors" for layout in (first, second))
        assert a.read_bytes() == b.read_bytes(), name
        assert json.loads(a.with_name("head.json").read_text()) == json.loads(b.with_name("head.json").read_text())


def test_heads_cutting_their_own_rows_and_heads_given_cuts_fit_as_in_one_process(local_ray, tmp_path):
    """ALIEN declares every column read, so its task cuts the train and val rows from the read blocks
    itself; temperature is handed cuts made by separate tasks. Both must see the rows in file order."""
    layout = write_features(tmp_path)
    fit_heads.run(config(tmp_path, ["alien", "temperature"]))
    train, val, test = (split_table(layout, s) for s in ("train", "val", "test"))
    classifier = load_classifier(layout.features_dir)
    for name, params in (("alien", {"classifier": classifier, **QUICK["alien"]}), ("temperature", {})):
        expected = HEADS.get(name)(**params).fit(train, val=val).uncertainty(test)
        np.testing.assert_allclose(load_head(layout.head_dir(name)).uncertainty(test), expected, rtol=1e-5,
                                   atol=1e-7, err_msg=name)


def test_a_calibration_split_fits_on_a_share_of_val_and_reports_the_rest(local_ray, tmp_path):
    layout = write_features(tmp_path)
    fit_heads.run(config(tmp_path, ["mahalanobis", "alien"], fit_split="calibration"))
    val = split_table(layout, "val")
    in_cal = id_share(val["id"].to_pylist(), 0.5, seed=0, salt=fit_heads.CALIBRATION_SALT)
    assert 0 < in_cal.sum() < ROWS["val"]
    report = json.loads((layout.stage_dir("fit_heads") / "metrics.json").read_text())
    assert report["metrics"]["val"]["mahalanobis"]["n"] == int((~in_cal).sum())
    assert report["metrics"]["test"]["mahalanobis"]["n"] == ROWS["test"]
    test = split_table(layout, "test")
    expected = Mahalanobis().fit(val.filter(in_cal)).uncertainty(test)
    np.testing.assert_allclose(load_head(layout.head_dir("mahalanobis")).uncertainty(test), expected, rtol=1e-5)


def test_a_feature_file_with_the_wrong_hidden_size_is_named(tmp_path):
    layout = write_features(tmp_path)
    bad = split_table(layout, "train").slice(64, 64)
    write_part(feature_table(ids=bad["id"].to_pylist(), label=column(bad, "label"), pred=column(bad, "pred"),
                             logits=column(bad, "logits"), hidden=np.zeros((64, 8))),
               part_path(layout.features_split_dir("train"), 1))
    with pytest.raises(ValueError, match=r"split=train/part-00001\.parquet: column 'hidden' has width 8"):
        fit_heads.run(config(tmp_path, ["mahalanobis"]))


def test_calibrated_entries_fit_the_map_on_a_share_of_val_and_report_an_error_probability(local_ray, tmp_path):
    layout = write_features(tmp_path)
    entries = [{"name": "alien", "params": QUICK["alien"], "calibrate": "platt"},
               {"name": "mahalanobis", "calibrate": "isotonic", "calibrate_fraction": 0.4},
               {"name": "msp", "calibrate": "beta", "save_as": "msp_cal"}]
    cfg = load_config(Config, data={"run": {"root": str(tmp_path), "run_id": "r"}, "heads": entries})
    fit_heads.run(cfg)
    report = json.loads((layout.stage_dir("fit_heads") / "metrics.json").read_text())
    assert set(report["heads"]) == {"alien_platt", "mahalanobis_isotonic", "msp_cal"}
    assert report["heads"]["alien_platt"]["params"]["head"] == {"name": "alien", "params": {
        **{k: v for k, v in HEADS.get("alien")(classifier=None, **QUICK["alien"]).get_params().items()
           if k != "classifier"}}}
    train, val, test = (split_table(layout, s) for s in ("train", "val", "test"))
    truth = {c: column(test, c) for c in ("pred", "label", "logits")}
    classifier = load_classifier(layout.features_dir)
    for key, head in (("alien_platt", Calibrated(head=Alien(classifier=classifier, **QUICK["alien"]), method="platt")),
                      ("mahalanobis_isotonic", Calibrated(head=Mahalanobis(), method="isotonic", fraction=0.4)),
                      ("msp_cal", Calibrated(head=HEADS.get("msp")(), method="beta"))):
        expected = head.fit(train, val=val).uncertainty(test)
        saved = load_head(layout.head_dir(key))
        np.testing.assert_allclose(saved.uncertainty(test), expected, rtol=1e-5, atol=1e-7, err_msg=key)
        assert report["heads"][key]["error_probability"] and report["metrics"]["test"][key]["confidence"] == "1-U"
        again = evaluate_scores(expected, error_probability=True, **truth)
        assert {k: report["metrics"]["test"][key][k] for k in ("roc_auc", "ece", "brier")} == pytest.approx(
            {k: again[k] for k in ("roc_auc", "ece", "brier")}, rel=1e-4)


def test_a_column_that_is_not_cached_is_named_with_its_file(tmp_path):
    layout = write_features(tmp_path)
    path = part_path(layout.features_split_dir("val"), 0)
    write_part(pq.read_table(path).drop_columns(["hidden"]), path)
    named = r"split=val/part-00000\.parquet: head 'mahalanobis' needs column 'hidden'"
    with pytest.raises(MissingColumnError, match=named):
        fit_heads.run(config(tmp_path, ["msp", "mahalanobis"]))
    with pytest.raises(MissingColumnError, match=r"part-00000\.parquet: score_columns needs column 'perplexity'"):
        fit_heads.run(config(tmp_path, ["msp"], score_columns=["perplexity"]))


def test_bad_heads_fail_before_any_work(tmp_path):
    write_features(tmp_path)
    with pytest.raises(UnknownNameError, match="Did you mean 'alien'"):
        fit_heads.run(config(tmp_path, ["alein"]))
    with pytest.raises(TypeError, match="no parameter"):
        fit_heads.run(load_config(Config, data={"run": {"root": str(tmp_path), "run_id": "r"},
                                                "heads": [{"name": "msp", "params": {"alpha": 1}}]}))


def test_configs_validate_and_the_default_heads_are_every_registered_head(tmp_path):
    assert sorted(DEFAULT_HEADS) == sorted(HEADS)
    for path in sorted((REPO / "jobs" / "configs" / "fit_heads").glob("*.yaml")):
        load_config(Config, path)
    with pytest.raises(ConfigError, match="listed twice"):
        config(tmp_path, ["alien", "alien"])
    two = load_config(Config, data={"heads": [{"name": "alien"}, {"name": "alien", "save_as": "alien_bce",
                                                                  "params": {"alpha": 0, "beta": 0}}]})
    assert [h.key for h in two.heads] == ["alien", "alien_bce"]
    with pytest.raises(ConfigError, match="fit_split"):
        load_config(Config, data={"fit_split": "test"})
