"""Dataset reading, column mapping, ids and the error messages that name the file and row."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ue.data import DataError, check_labels, id_share, load_dataset_split, load_split, num_labels, qa_prompt

DATA = Path(os.environ.get("UE_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data")
needs_data = pytest.mark.skipif(not (DATA / "sst2").is_dir(), reason="no datasets at $UE_DATA_DIR or ../shared/data")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_local_file_with_column_mapping_and_derived_ids(tmp_path):
    f = _write_jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "y": 1}, {"sentence": "b", "y": 0}])
    table = load_split(str(f), "train", task="sequence_classification", columns={"text": "sentence", "label": "y"})
    assert table.column("text").to_pylist() == ["a", "b"]
    assert table.column("id").to_pylist() == ["train-0", "train-1"]


def test_given_ids_are_kept_as_strings(tmp_path):
    f = _write_jsonl(tmp_path / "x.jsonl", [{"id": 7, "text": "a", "label": 1}])
    assert load_split(str(f), "x", task="sequence_classification").column("id").to_pylist() == ["7"]


def test_errors_name_file_row_and_column(tmp_path):
    f = _write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "pos"}])
    with pytest.raises(DataError, match=r"t.jsonl:2: column 'label' holds str 'pos' where earlier rows hold int"):
        load_split(str(f), "t", task="sequence_classification")
    n = _write_jsonl(tmp_path / "n.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": -1}])
    with pytest.raises(DataError, match=r"n.jsonl: row 1: column 'label' must be a non-negative int"):
        load_split(str(n), "n", task="sequence_classification")
    g = _write_jsonl(tmp_path / "g.jsonl", [{"sentence": "a", "label": 1}])
    with pytest.raises(DataError, match=r"g.jsonl: task sequence_classification needs column 'text'.*columns.text"):
        load_split(str(g), "g", task="sequence_classification")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        load_split(str(bad), "bad", task="sequence_classification")
    ok = _write_jsonl(tmp_path / "ok.jsonl", [{"text": "a", "label": 3}])
    table = load_split(str(ok), "ok", task="sequence_classification")
    with pytest.raises(DataError, match=r"row 0: label 3 out of range \[0, 2\)"):
        check_labels(table, "sequence_classification", 2, source="ok.jsonl")


def test_max_rows_is_a_seeded_subset_in_file_order(tmp_path):
    f = _write_jsonl(tmp_path / "t.jsonl", [{"text": str(i), "label": i % 2} for i in range(100)])
    a = load_split(str(f), "t", task="sequence_classification", max_rows=10, seed=3).column("id").to_pylist()
    b = load_split(str(f), "t", task="sequence_classification", max_rows=10, seed=3).column("id").to_pylist()
    assert a == b and len(a) == 10 and a == sorted(a, key=lambda s: int(s.split("-")[1]))


@needs_data
def test_data_root_datasets_for_every_task():
    sst = load_split("sst2", "validation", task="sequence_classification", root=DATA)
    assert sst.num_rows == 872 and num_labels([sst], "sequence_classification", name="sst2", root=DATA) == 2
    ner = load_split("conll2003", "validation", task="token_classification", max_rows=5, root=DATA)
    assert {"tokens", "tags"} <= set(ner.column_names)
    assert num_labels([ner], "token_classification", name="conll2003", root=DATA) == 9
    qa = load_split("squad", "dev_v2_subset_answerable", task="causal_lm", max_rows=3, root=DATA)
    row = qa.to_pylist()[0]
    assert row["prompt"] == qa_prompt(row["question"], row["context"]) and row["answer"] == row["answers"][0]
    with pytest.raises(DataError, match="no split file 'nope'"):
        load_split("sst2", "nope", task="sequence_classification", root=DATA)


SPLITS = {"train": "train", "val": "validation", "test": "test"}


def _trec_like(tmp_path: Path) -> Path:
    """A dataset folder with train and test only (as TREC, AG News, IMDB ship)."""
    folder = tmp_path / "trec_like"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", [{"text": f"t{i}", "label": i % 3} for i in range(1000)])
    _write_jsonl(folder / "test.jsonl", [{"text": f"x{i}", "label": i % 3} for i in range(50)])
    return folder


def test_val_from_train_carves_a_seeded_id_stable_share(tmp_path):
    folder = _trec_like(tmp_path)

    def read(split, **kw):
        return load_dataset_split(str(folder), split, splits=SPLITS, task="sequence_classification",
                                  val_from_train=0.1, **kw)

    train, val = read("train"), read("val")
    train_ids, val_ids = set(train.column("id").to_pylist()), set(val.column("id").to_pylist())
    assert not train_ids & val_ids and len(train_ids | val_ids) == 1000
    assert 70 <= len(val_ids) <= 130  # ~10% of 1000 rows
    assert val_ids == {f"train-{i}" for i in range(1000) if id_share([f"train-{i}"], 0.1, seed=0)[0]}
    assert read("test").num_rows == 50  # test is read as is
    # max_rows subsamples the carved split; it never moves a row between train and val.
    assert set(read("train", max_rows=200).column("id").to_pylist()) <= train_ids
    assert set(read("val", max_rows=20).column("id").to_pylist()) <= val_ids
    assert set(read("val", seed=1).column("id").to_pylist()) != val_ids  # the seed picks another share


def test_id_share_is_a_pure_function_of_id_and_seed():
    ids = [f"r{i}" for i in range(2000)]
    share = id_share(ids, 0.25, seed=3)
    assert share.dtype == bool and 0.2 < share.mean() < 0.3
    assert np.array_equal(id_share(ids[::-1], 0.25, seed=3), share[::-1])  # row order does not matter
    assert not np.any(share & ~id_share(ids, 0.5, seed=3))  # a smaller share lies inside a larger one


def test_without_a_val_file_the_error_points_at_val_from_train(tmp_path):
    folder = _trec_like(tmp_path)
    with pytest.raises(DataError, match="no split file 'validation'.*val_from_train"):
        load_dataset_split(str(folder), "val", splits=SPLITS, task="sequence_classification")
