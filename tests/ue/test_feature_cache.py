"""ue.feature_cache: the documented Parquet schema, atomic part files and the schema checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ue.feature_cache import check_feature_files, feature_table, part_files, part_path, write_part
from ue.features import MissingColumnError, column


def _table(n: int = 4, d: int = 3, c: int = 2) -> pa.Table:
    rng = np.random.default_rng(0)
    return feature_table(
        ids=[f"r{i}" for i in range(n)], label=np.arange(n) % c, pred=np.zeros(n, np.int32),
        logits=rng.normal(size=(n, c)), hidden=rng.normal(size=(n, d)), extra={"word": list("abcd")[:n]},
    )


def test_feature_table_has_the_documented_types():
    table = _table()
    assert table.column_names == ["id", "label", "pred", "logits", "hidden", "word"]
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("label").type == pa.int64() and table.schema.field("pred").type == pa.int64()
    assert table.schema.field("logits").type == pa.list_(pa.float32(), 2)
    assert table.schema.field("hidden").type == pa.list_(pa.float32(), 3)
    assert column(table, "hidden").shape == (4, 3)


def test_a_written_part_reads_back_in_pyarrow_and_pandas(tmp_path):
    table = _table()
    path = write_part(table, part_path(tmp_path / "split=train", 3))
    assert path.name == "part-00003.parquet"
    assert pq.read_table(path).equals(table)
    frame = pd.read_parquet(path)
    assert frame["label"].dtype == np.int64
    assert frame["hidden"].iloc[0].dtype == np.float32 and frame["hidden"].iloc[0].shape == (3,)
    np.testing.assert_array_equal(np.stack(frame["logits"]), column(table, "logits"))


def test_part_files_lists_complete_parts_only(tmp_path):
    split = tmp_path / "split=val"
    write_part(_table(), part_path(split, 1))
    write_part(_table(), part_path(split, 0))
    (split / ".part-00002.parquet.abc.tmp").write_bytes(b"half a file")
    assert [p.name for p in part_files(split)] == ["part-00000.parquet", "part-00001.parquet"]
    assert part_files(tmp_path / "missing") == []


def test_a_missing_column_names_the_file_the_column_and_who_needs_it(tmp_path):
    path = write_part(_table().drop_columns(["hidden"]), part_path(tmp_path, 0))
    with pytest.raises(MissingColumnError, match=r"part-00000\.parquet: head 'alien' needs column 'hidden'"):
        check_feature_files([path], needs={"hidden": "head 'alien'"}, hidden_size=3, num_labels=2)


def test_a_wrong_hidden_size_names_the_file_and_the_column(tmp_path):
    good = write_part(_table(d=3), part_path(tmp_path, 0))
    bad = write_part(_table(d=5), part_path(tmp_path, 1))
    check_feature_files([good], needs={"hidden": "x"}, hidden_size=3, num_labels=2)
    with pytest.raises(ValueError, match=r"part-00001\.parquet: column 'hidden' has width 5.*hidden_size d = 3"):
        check_feature_files([good, bad], needs={"hidden": "x"}, hidden_size=3, num_labels=2)
    with pytest.raises(ValueError, match=r"column 'logits' has width 2.*num_labels C = 4"):
        check_feature_files([good], needs={}, hidden_size=3, num_labels=4)
    with pytest.raises(FileNotFoundError, match="extract"):
        check_feature_files([], needs={}, hidden_size=3, num_labels=2)
