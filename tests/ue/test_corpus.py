"""Reading a corpus as blocks: every record exactly once whatever the block limits, bad rows named."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ue.corpus as corpus
from ue.corpus import Block, Columns, list_inputs, plan_blocks, read_block


def _read_all(files, columns: Columns, **limits) -> list[tuple]:
    """(file name, line, id, text, reason start) of every record, block by block, in plan order."""
    out = []
    for block in plan_blocks(files, **limits):
        assert Block.from_json(block.to_json()) == block
        rows = read_block(block, columns)
        name = Path(block.path).name
        for line, row_id, text, reason in zip(rows["line"], rows["id"], rows["text"], rows["reason"], strict=True):
            out.append((name, line, row_id, text, reason and reason.split(":")[0]))
    return out


@pytest.fixture
def files(tmp_path: Path) -> Path:
    lines = [json.dumps({"text": f"sentence {i} " + "x" * (i % 7), "id": i}) for i in range(40)]
    lines[4] = '{"text": "oops"'
    lines[11] = json.dumps({"text": "", "id": 11})
    lines[12] = ""
    lines[20] = json.dumps({"text": 3.5, "id": 20})
    lines[21] = json.dumps({"text": "no id"})
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with (tmp_path / "a.jsonl").open("ab") as f:
        f.write(b'{"text": "latin-1 \xe9", "id": 99}')  # no line end at the end of the file
    (tmp_path / "b.csv").write_text('id,text\r\n1,"a ""quoted""\r\nnewline"\r\n2,plain\r\n3\r\n4,"x,y"\r\n',
                                    encoding="utf-8")
    return tmp_path


def test_blocks_cover_every_record_once_whatever_the_limits(files: Path, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 13)  # boundaries fall everywhere inside planning chunks
    inputs = list_inputs([str(files)], derived_ids=False)
    columns = Columns(id="id")
    expected = _read_all(inputs, columns, rows_per_block=10**6, block_bytes=10**9)
    for rows, size in [(1, 10**9), (3, 10**9), (7, 50), (10**6, 1), (2, 100)]:
        assert _read_all(inputs, columns, rows_per_block=rows, block_bytes=size) == expected

    jsonl = [r for r in expected if r[0] == "a.jsonl"]
    assert len(jsonl) == 40  # 41 lines, one blank
    bad = {r[1]: r[4] for r in jsonl if r[4]}
    assert bad == {5: "malformed JSON", 12: "empty text", 21: "wrong type", 22: "missing id",
                   41: "undecodable bytes"}
    assert [r for r in expected if r[0] == "b.csv"] == [
        ("b.csv", 2, "1", 'a "quoted"\r\nnewline', None), ("b.csv", 4, "2", "plain", None),
        ("b.csv", 5, None, None, "wrong number of fields"), ("b.csv", 6, "4", "x,y", None),
    ]


def test_blocks_respect_both_limits_and_names_are_stable(files: Path):
    inputs = list_inputs([str(files / "a.jsonl")], derived_ids=False)
    by_rows = list(plan_blocks(inputs, rows_per_block=10, block_bytes=10**9))
    assert [b.first_line for b in by_rows] == [1, 11, 21, 31, 41]
    assert [b.name for b in by_rows] == [f"part-00000-{k:06d}" for k in range(5)]
    assert list(plan_blocks(inputs, rows_per_block=10, block_bytes=10**9)) == by_rows
    by_bytes = list(plan_blocks(inputs, rows_per_block=10**6, block_bytes=200))
    assert all(b.stop - b.start < 200 + 60 for b in by_bytes) and len(by_bytes) > 5


def test_parquet_blocks_stay_inside_row_groups_and_read_each_row_once(tmp_path: Path):
    texts = [f"row {i}" for i in range(23)]
    texts[6], texts[15] = None, "  "
    pq.write_table(pa.table({"text": texts, "other": list(range(23))}), tmp_path / "p.parquet", row_group_size=10)
    inputs = list_inputs([str(tmp_path / "p.parquet")])
    blocks = list(plan_blocks(inputs, rows_per_block=4, block_bytes=1))
    assert [(b.start, b.stop) for b in blocks] == [(0, 4), (4, 8), (8, 10), (10, 14), (14, 18), (18, 20), (20, 23)]
    rows = _read_all(inputs, Columns(), rows_per_block=4, block_bytes=1)
    assert [r[1] for r in rows] == list(range(1, 24))
    assert [r[2] for r in rows if not r[4]] == [f"p.parquet:{i + 1}" for i in range(23) if i not in (6, 15)]
    assert {r[1]: r[4] for r in rows if r[4]} == {7: "missing text", 16: "empty text"}


def test_wrong_column_types_and_undecodable_parquet_bytes_are_quarantined(tmp_path: Path):
    pq.write_table(pa.table({"text": pa.array([b"ok", b"\xff\xfe"], pa.binary())}), tmp_path / "bin.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    rows = _read_all(list_inputs([str(tmp_path)]), Columns(), rows_per_block=10, block_bytes=10)
    assert [(r[0], r[3], r[4]) for r in rows] == [
        ("bin.parquet", "ok", None), ("bin.parquet", None, "undecodable bytes"),
        ("ints.parquet", None, "wrong type"), ("ints.parquet", None, "wrong type"),
    ]


def test_text_files_and_pairs(tmp_path: Path):
    (tmp_path / "t.txt").write_text("alpha\r\n\n  \nbeta", encoding="utf-8")
    rows = _read_all(list_inputs([str(tmp_path / "t.txt")]), Columns(), rows_per_block=1, block_bytes=1)
    assert rows == [("t.txt", 1, "t.txt:1", "alpha", None), ("t.txt", 4, "t.txt:4", "beta", None)]
    (tmp_path / "p.jsonl").write_text('{"a": "x", "b": "y"}\n{"a": "x"}\n', encoding="utf-8")
    block = next(plan_blocks(list_inputs([str(tmp_path / "p.jsonl")]), rows_per_block=9, block_bytes=99))
    rows = read_block(block, Columns(text="a", text_pair="b"))
    assert rows["text_pair"] == ["y", None] and rows["reason"] == [None, "missing text: no field 'b'"]
    with pytest.raises(ValueError, match="plain-text file"):
        read_block(next(plan_blocks(list_inputs([str(tmp_path / "t.txt")]), rows_per_block=9, block_bytes=9)),
                   Columns(id="id"))


def test_listing_uris_globs_folders_and_errors(tmp_path: Path, monkeypatch):
    for name in ("x.jsonl", "y.csv", "z.md"):
        (tmp_path / name).write_text("id,text\n", encoding="utf-8")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "x.jsonl").write_text("", encoding="utf-8")
    assert [f.name for f in list_inputs([str(tmp_path)])] == ["x.jsonl", "y.csv"]
    uri = list_inputs([(tmp_path / "x.jsonl").as_uri()])[0]
    assert uri.path.startswith("file://") and uri.format == "jsonl"
    monkeypatch.setenv("CORPUS_DIR", str(tmp_path))
    assert [f.name for f in list_inputs(["$CORPUS_DIR/*.csv"])] == ["y.csv"]
    with pytest.raises(ValueError, match="same file name"):
        list_inputs([str(tmp_path / "x.jsonl"), str(sub / "x.jsonl")])
    assert len(list_inputs([str(tmp_path / "x.jsonl"), str(sub / "x.jsonl")], derived_ids=False)) == 2
    with pytest.raises(ValueError, match="unknown corpus format '.md'"):
        list_inputs([str(tmp_path / "z.md")])
    assert list_inputs([str(tmp_path / "z.md")], format="text")[0].format == "text"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_inputs([str(tmp_path / "missing.jsonl")])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        list_inputs([str(tmp_path / "*.parquet")])


def test_a_uri_block_reads_like_a_local_one(files: Path):
    local = _read_all(list_inputs([str(files / "b.csv")]), Columns(id="id"), rows_per_block=2, block_bytes=99)
    remote = _read_all(list_inputs([(files / "b.csv").as_uri()]), Columns(id="id"), rows_per_block=2, block_bytes=99)
    assert remote == local


def test_json_that_python_cannot_parse_is_quarantined_with_file_and_line(tmp_path: Path):
    lines = ['{"text": "before", "id": "a"}', '{"text": ' + "9" * 5000 + "}", "[" * 200_000,
             '{"text": "after", "id": "b"}']
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    block = next(plan_blocks(list_inputs([str(tmp_path / "bad.jsonl")]), rows_per_block=99, block_bytes=1 << 20))
    rows = read_block(block, Columns(id="id"))
    assert rows["text"] == ["before", None, None, "after"] and rows["line"] == [1, 2, 3, 4]
    assert rows["reason"][1].startswith("unparsable JSON: ValueError") and "4300" in rows["reason"][1]
    assert rows["reason"][2].startswith("unparsable JSON: RecursionError")


def test_a_byte_order_mark_opens_the_file_not_the_first_row(tmp_path: Path):
    for name, text in (("bom.jsonl", '{"text": "first"}\n{"text": "second"}\n'), ("bom.txt", "first\nsecond\n")):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
        block = next(plan_blocks(list_inputs([str(tmp_path / name)]), rows_per_block=9, block_bytes=1 << 20))
        rows = read_block(block, Columns())
        assert rows["text"] == ["first", "second"] and rows["reason"] == [None, None], name


def test_an_existing_file_name_with_brackets_is_taken_literally(tmp_path: Path):
    (tmp_path / "data [v2].jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    (tmp_path / "d.jsonl").write_text('{"text": "y"}\n', encoding="utf-8")
    assert [f.name for f in list_inputs([str(tmp_path / "data [v2].jsonl")])] == ["data [v2].jsonl"]
    assert [f.name for f in list_inputs([str(tmp_path / "[d].jsonl")])] == ["d.jsonl"]  # not a file: a glob


def test_a_one_megabyte_csv_field_is_read_like_the_same_jsonl_text(tmp_path: Path):
    long = "word " * 200_000
    (tmp_path / "big.csv").write_text(f'id,text\nbig,"{long}"\nsmall,fine\n', encoding="utf-8")
    (tmp_path / "big.jsonl").write_text(json.dumps({"id": "big", "text": long}) + "\n", encoding="utf-8")
    for name in ("big.csv", "big.jsonl"):
        block = next(plan_blocks(list_inputs([str(tmp_path / name)]), rows_per_block=9, block_bytes=4 << 20))
        rows = read_block(block, Columns(id="id"))
        assert rows["text"][0] == long and rows["reason"][0] is None, name


def test_files_a_folder_holds_in_other_formats_are_listed_as_skipped(tmp_path: Path, caplog):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    (tmp_path / "b.jsonl.gz").write_bytes(b"\x1f\x8b")
    (tmp_path / "notes.md").write_text("#", encoding="utf-8")
    with caplog.at_level("WARNING", logger="ue.corpus"):
        assert [f.name for f in list_inputs([str(tmp_path)])] == ["a.jsonl"]
    assert "skipping 2 file(s)" in caplog.text and "b.jsonl.gz, notes.md" in caplog.text
    with pytest.raises(ValueError, match="compressed files cannot be cut into blocks"):
        list_inputs([str(tmp_path / "b.jsonl.gz")])


def test_an_unclosed_quote_loses_one_record_and_reading_recovers_at_the_next_line(tmp_path: Path):
    records = [f"r{i},text {i}" for i in range(5000)]
    records[10] = 'r10,"an unclosed quote'
    (tmp_path / "q.csv").write_text("id,text\n" + "\n".join(records) + "\n", encoding="utf-8")
    files = list_inputs([str(tmp_path / "q.csv")])
    blocks = list(plan_blocks(files, rows_per_block=100, block_bytes=10**9))
    assert len(blocks) == 50  # rows_per_block holds past the broken record
    rows = _read_all(files, Columns(id="id"), rows_per_block=100, block_bytes=10**9)
    assert len(rows) == 5000
    assert [r for r in rows if r[4]] == [("q.csv", 12, None, None, "malformed CSV record")]
    assert rows[11] == ("q.csv", 13, "r11", "text 11", None) and rows[-1] == ("q.csv", 5001, "r4999", "text 4999", None)


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_a_quote_that_closes_into_a_broken_record_is_cut_back_to_its_line(tmp_path: Path, monkeypatch, chunk):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(corpus, "MAX_QUOTED_BYTES", 60)
    (tmp_path / "m.csv").write_text(
        'id,text\n'
        'a,"two\nlines"\n'                 # a real multi-line field
        'b,"opens here\nc,plain\n'          # the quote pairs with d's first quote: "d,"x" is not a record
        'd,"x"\n'
        'e,"a valid field, but longer than MAX_QUOTED_BYTES\n' + "f,filler\n" * 8 + 'too late"\n'
        'h,last\n', encoding="utf-8")
    rows = _read_all(list_inputs([str(tmp_path / "m.csv")]), Columns(id="id"), rows_per_block=3, block_bytes=10**9)
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        (2, "a", "two\nlines", None), (4, None, None, "malformed CSV record"), (5, "c", "plain", None),
        (6, "d", "x", None), (7, None, None, "malformed CSV record"),
        *[(8 + k, "f", "filler", None) for k in range(8)], (16, None, None, "malformed CSV record"),
        (17, "h", "last", None),
    ]
