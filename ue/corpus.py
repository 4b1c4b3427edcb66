"""A corpus to score, read as deterministic blocks with its bad rows set aside (input of ``jobs.score``).

A corpus is one or more JSONL, CSV, Parquet or plain-text files (one text per line), given as local
paths, folders, local globs or pyarrow filesystem URIs (``s3://``, ``gs://``, ``file://``).

:func:`plan_blocks` cuts every file into :class:`Block` s, a pure function of the file's bytes and
the two limits, so a rerun finds the same blocks under the same names (the unit of resume):

- JSONL and text: runs of whole lines, at most ``rows_per_block`` lines, cut at the first line end
  past ``block_bytes``; CSV the same over records (a newline inside double quotes does not end a
  record, RFC 4180), after the header record. A quote that opens a multi-line record must close into
  one valid record with the header's field count within :data:`MAX_QUOTED_BYTES`; otherwise (an
  unclosed quote) the record is its first line alone, quarantined, and reading recovers at the next
  line, so one broken quote cannot swallow the rest of the file. Planning streams each file once in
  8 MiB chunks and keeps only the boundaries and the line number each block starts at.
- Parquet: row ranges of at most ``rows_per_block`` rows inside one row group (only footers are read).

:func:`read_block` parses one block. Blank lines are not rows. Every other record becomes a good row
(``id``, ``text``, ``text_pair``, ``line``) or a bad row (``line``, ``id`` if known, ``reason``,
``raw``): undecodable bytes, a malformed JSON line or CSV record, a JSON value that is not an object,
a CSV record with the wrong number of fields, a missing or null field, a field of the wrong type,
an empty text. ``line`` is the 1-based line of the file (the line a CSV record starts on; the row
number for Parquet). Without an id column, ids are ``<file name>:<line>``, so file names must differ.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

log = logging.getLogger("ue.corpus")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
           ".txt": "text"}
"""File suffix -> format when ``format="auto"``."""
CHUNK_BYTES = 8 << 20
MAX_QUOTED_BYTES = 8 << 20
"""The longest CSV record that may span lines (a quoted field with newlines)."""
RAW_CHARS = 500
"""A bad row keeps this many characters of its raw content, to show what was wrong."""
ROW_FIELDS = ("id", "text", "text_pair", "line", "reason", "raw")
"""Per-row lists of a read block; good rows have ``reason = raw = None``, bad ones ``text = None``."""
_MISSING = object()


@dataclass(frozen=True)
class InputFile:
    """One file of the corpus: ``path`` is an absolute local path or a URI."""

    path: str
    format: str
    size: int
    mtime_ns: int | None

    @property
    def name(self) -> str:
        return _file_name(self.path)


@dataclass(frozen=True)
class Columns:
    """Which fields hold the text, the optional second text of a pair and the optional row id."""

    text: str = "text"
    text_pair: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class Block:
    """A deterministic slice of one file: bytes ``[start, stop)`` (rows for Parquet)."""

    path: str
    format: str
    file_index: int
    index: int
    start: int
    stop: int
    first_line: int
    header: tuple[str, ...] = field(default=())
    """CSV only: the file's header record."""

    @property
    def name(self) -> str:
        """Deterministic shard name: ``part-<file number>-<block number>``."""
        return f"part-{self.file_index:05d}-{self.index:06d}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Block:
        doc = json.loads(text)
        return cls(**{**doc, "header": tuple(doc["header"])})


# -- listing ---------------------------------------------------------------------------------------
def list_inputs(paths: Sequence[str], *, format: str = "auto", derived_ids: bool = True) -> list[InputFile]:
    """The corpus files named by ``paths`` (files, folders, local globs, URIs), in the given order.

    ``$VARS`` and ``~`` in local paths are expanded. A folder contributes its files with a known
    suffix, sorted; a file listed twice counts once.

    Raises:
        FileNotFoundError: a path matches nothing.
        ValueError: a file's format is unknown (or compressed), or, with ``derived_ids``, two files
            share a name (their derived ids would collide).
    """
    files: dict[str, InputFile] = {}
    for raw in paths:
        for path in _expand(raw):
            fs, where = filesystem(path)
            info = fs.get_file_info(where)
            if info.type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"corpus path {raw!r}: {path} does not exist")
            infos = [info]
            if info.type == pafs.FileType.Directory:
                found = fs.get_file_info(pafs.FileSelector(where, recursive=False))
                infos = sorted((i for i in found if i.is_file and _suffix(i.path) in FORMATS), key=lambda i: i.path)
                skipped = sorted(i.path for i in found if i.is_file and _suffix(i.path) not in FORMATS)
                if skipped:
                    log.warning("corpus folder %s: skipping %d file(s) that are not %s: %s", path, len(skipped),
                                "/".join(FORMATS), ", ".join(_file_name(f) for f in skipped[:10]))
                if not infos:
                    raise FileNotFoundError(f"corpus folder {path} holds no {', '.join(FORMATS)} file")
            for i in infos:
                full = path if i is info else _child(path, i.path)
                files.setdefault(full, InputFile(full, _format(full, format), i.size, i.mtime_ns))
    if derived_ids:
        _check_distinct_names(list(files.values()))
    return list(files.values())


def _file_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a local path or URI, and the path inside it."""
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def _child(folder: str, inner: str) -> str:
    """A file found inside ``folder``, named the way ``folder`` was (a local path or a URI)."""
    return f"{folder.split('://', 1)[0]}://{inner}" if "://" in folder else inner


def _expand(raw: str) -> list[str]:
    if "://" in raw:
        return [raw]
    path = os.path.abspath(os.path.expanduser(os.path.expandvars(raw)))
    if not any(c in path for c in "*?[") or os.path.exists(path):  # an existing name is itself, even with [ ]
        return [path]
    matches = sorted(glob.glob(path))
    if not matches:
        raise FileNotFoundError(f"corpus path {raw!r}: the pattern {path} matches no file")
    return matches


def _suffix(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _format(path: str, format: str) -> str:
    if format != "auto":
        return format
    suffix = _suffix(path)
    if suffix in (".gz", ".bz2", ".zst", ".xz", ".zip"):
        raise ValueError(f"{path}: compressed files cannot be cut into blocks; decompress it first")
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unknown corpus format {suffix!r}; use one of {', '.join(FORMATS)} "
                         "or set corpus.format to jsonl, csv, parquet or text")
    return FORMATS[suffix]


def _check_distinct_names(files: list[InputFile]) -> None:
    seen: dict[str, str] = {}
    for f in files:
        if f.name in seen:
            raise ValueError(f"{seen[f.name]} and {f.path} have the same file name, so the derived ids "
                             "<file name>:<line> would collide; name an id column (corpus.id_column) or rename one")
        seen[f.name] = f.path


# -- planning --------------------------------------------------------------------------------------
def plan_blocks(files: Sequence[InputFile], *, rows_per_block: int, block_bytes: int) -> Iterator[Block]:
    """Every file's blocks, in file order (see the module docstring)."""
    if rows_per_block < 1 or block_bytes < 1:
        raise ValueError(f"rows_per_block and block_bytes must be >= 1, got {rows_per_block}, {block_bytes}")
    for k, f in enumerate(files):
        if f.format == "parquet":
            yield from _parquet_blocks(f, k, rows_per_block)
        else:
            yield from _line_blocks(f, k, rows_per_block, block_bytes)


def _parquet_blocks(f: InputFile, file_index: int, rows: int) -> Iterator[Block]:
    import pyarrow.parquet as pq

    fs, where = filesystem(f.path)
    with fs.open_input_file(where) as stream:
        meta = pq.ParquetFile(stream).metadata
    start, index = 0, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        for a in range(0, n, rows):  # never across row groups: a block reads one group's pages only
            stop = start + min(a + rows, n)
            yield Block(f.path, "parquet", file_index, index, start + a, stop, start + a + 1)
            index += 1
        start += n


def _line_blocks(f: InputFile, file_index: int, rows: int, max_bytes: int) -> Iterator[Block]:
    """Blocks of whole lines (records for CSV), cut at ``rows`` records or past ``max_bytes``."""
    fs, where = filesystem(f.path)
    header: tuple[str, ...] = ()
    need_header = f.format == "csv"
    start, line, count, index = 0, 1, 0, 0
    with fs.open_input_stream(where) as stream:
        for ends, newlines_before, newlines in (_csv_ends(stream) if f.format == "csv" else _line_ends(stream)):
            i = 0
            if need_header and len(ends):  # the first record is the header; blocks start after it
                header, start, i, need_header = _read_header(fs, where, int(ends[0])), int(ends[0]), 1, False
                line = 1 + newlines_before + int(np.searchsorted(newlines, ends[0], side="right"))
            while i < len(ends):
                by_rows = i + rows - count - 1
                by_bytes = i + int(np.searchsorted(ends[i:], start + max_bytes))
                j = min(by_rows, by_bytes)
                if j >= len(ends):
                    count += len(ends) - i
                    break
                yield Block(f.path, f.format, file_index, index, start, int(ends[j]), line, header)
                line = 1 + newlines_before + int(np.searchsorted(newlines, ends[j], side="right"))
                start, count, index, i = int(ends[j]), 0, index + 1, j + 1
    if start < f.size and not need_header:  # (a CSV without a line end is a header alone: no records)
        yield Block(f.path, f.format, file_index, index, start, f.size, line, header)


def _line_ends(stream: Any) -> Iterator[tuple[np.ndarray, int, np.ndarray]]:
    """Per chunk: offsets just past each newline, the newlines before the chunk and (the same) the
    offsets just past each newline in it."""
    base, newlines_before = 0, 0
    while chunk := stream.read(CHUNK_BYTES):
        ends = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + base + 1
        yield ends, newlines_before, ends
        base, newlines_before = base + len(chunk), newlines_before + len(ends)


def _csv_ends(stream: Any) -> Iterator[tuple[np.ndarray, int, np.ndarray]]:
    """Per chunk: offsets just past each CSV record (the header first), the newlines before the
    chunk and the offsets just past each newline in it. A record still open at a chunk's end is
    carried into the next chunk (at most :data:`MAX_QUOTED_BYTES` of it)."""
    pending, base, newlines_before, fields = b"", 0, 0, None
    while True:
        chunk = stream.read(CHUNK_BYTES)
        buf = pending + chunk
        if not buf:
            return
        ends, fields, used = csv_record_ends(buf, fields=fields, final=not chunk)
        newlines = np.flatnonzero(np.frombuffer(buf, np.uint8, count=used) == 10) + base + 1
        yield ends + base, newlines_before, newlines
        pending, base, newlines_before = buf[used:], base + used, newlines_before + len(newlines)
        if not chunk:
            return


def csv_record_ends(data: bytes, *, fields: int | None, final: bool) -> tuple[np.ndarray, int | None, int]:
    """Where the CSV records of ``data`` (which starts at a record) end: ``(ends, fields, used)``.

    ``ends`` are offsets just past each record; ``fields`` is the header's field count (with
    ``fields=None`` the first record is the header and its count is returned); ``used`` is where
    the records found stop. Unless ``final``, a record that may continue past ``data`` is left
    unread (``used`` is its start). A line with an odd number of double quotes opens a record that
    ends on the next such line, if the lines between parse strictly as one record of ``fields``
    fields within :data:`MAX_QUOTED_BYTES`; otherwise the line alone is the record (a broken one),
    so planning and reading recover at the next line whatever follows. Decisions depend only on the
    bytes from the record's start, so a block read alone is cut exactly as the planner cut it.
    """
    buf = np.frombuffer(data, np.uint8)
    line_ends = np.flatnonzero(buf == 10) + 1
    if final and len(buf) and buf[-1] != 10:
        line_ends = np.append(line_ends, len(buf))
    quotes_before = np.searchsorted(np.flatnonzero(buf == 34), line_ends)
    odd = np.flatnonzero(np.diff(quotes_before, prepend=0) % 2 == 1)
    pieces: list[np.ndarray] = []
    pos, used = 0, 0
    while pos < len(line_ends):
        j = int(np.searchsorted(odd, pos))
        k = int(odd[j]) if j < len(odd) else len(line_ends)
        if fields is not None and k > pos:  # lines with balanced quotes: one record each
            pieces.append(line_ends[pos:k])
            pos, used = k, int(line_ends[k - 1])
            continue
        start, last = used, pos
        if k == pos:
            closes = int(odd[j + 1]) if j + 1 < len(odd) else None
            if closes is None and not final and len(buf) - start <= MAX_QUOTED_BYTES:
                break  # the quote may close in the next chunk
            if (closes is not None and line_ends[closes] - start <= MAX_QUOTED_BYTES
                    and _one_record(data[start:line_ends[closes]], fields)):
                last = closes
        if fields is None:
            fields = _field_count(data[start:line_ends[last]])
        pieces.append(line_ends[last:last + 1])
        pos, used = last + 1, int(line_ends[last])
    ends = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    return ends, fields, used


def _parse_csv(raw: bytes, *, strict: bool) -> list[list[str]]:
    text = raw.decode("utf-8", errors="replace")
    # The csv module refuses fields over 128 KiB; the caller bounds what one record can hold.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    return list(csv.reader(io.StringIO(text, newline=""), strict=strict))


def _one_record(raw: bytes, fields: int | None) -> bool:
    try:
        records = _parse_csv(raw, strict=True)
    except csv.Error:
        return False
    return len(records) == 1 and (fields is None or len(records[0]) == fields)


def _field_count(raw: bytes) -> int:
    try:
        records = _parse_csv(raw, strict=False)
    except csv.Error:
        return 0
    return len(records[0]) if records else 0


def _read_header(fs: pafs.FileSystem, where: str, end: int) -> tuple[str, ...]:
    with fs.open_input_file(where) as f:
        raw = f.read(end)
    text = raw.decode("utf-8-sig", errors="replace")
    return tuple(next(csv.reader(io.StringIO(text, newline="")), []))


# -- reading ---------------------------------------------------------------------------------------
def read_block(block: Block, columns: Columns) -> dict[str, list[Any]]:
    """The rows of one block as lists keyed by :data:`ROW_FIELDS` (one entry per non-blank record)."""
    if block.format == "text" and (columns.id or columns.text_pair):
        raise ValueError(f"{block.path}: a plain-text file is one text per line, with no id or text_pair field; "
                         "unset corpus.id_column and corpus.text_pair_column")
    rows = _Rows(_file_name(block.path), columns)
    if block.format == "parquet":
        _read_parquet(block, columns, rows)
        return rows.out
    fs, where = filesystem(block.path)
    with fs.open_input_file(where) as f:
        f.seek(block.start)
        data = f.read(block.stop - block.start)
    if block.format == "csv":
        _read_csv(data, block, rows)
        return rows.out
    for k, raw in enumerate(data.split(b"\n")):
        if raw.strip():
            rows.add_line(raw, block.first_line + k, block.format)
    return rows.out


def _read_csv(data: bytes, block: Block, rows: _Rows) -> None:
    ends = [0, *csv_record_ends(data, fields=len(block.header), final=True)[0].tolist()]
    line = block.first_line
    for a, b in zip(ends[:-1], ends[1:], strict=True):
        raw = data[a:b]
        if raw.strip():
            rows.add_csv(raw, line, block.header)
        line += raw.count(b"\n")


def _read_parquet(block: Block, columns: Columns, rows: _Rows) -> None:
    import pyarrow.parquet as pq

    fs, where = filesystem(block.path)
    with fs.open_input_file(where) as stream:
        pf = pq.ParquetFile(stream)
        sizes = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)])
        group = int(np.searchsorted(sizes, block.start, side="right")) - 1
        offset, n = block.start - int(sizes[group]), block.stop - block.start
        wanted = [c for c in (columns.text, columns.text_pair, columns.id) if c in pf.schema_arrow.names]
        pieces, seen = [], 0
        for batch in pf.iter_batches(batch_size=min(n, 65536), row_groups=[group], columns=wanted):
            lo, hi = max(offset - seen, 0), min(offset + n - seen, batch.num_rows)
            if hi > lo:
                pieces.append(batch.slice(lo, hi - lo))
            seen += batch.num_rows
            if seen >= offset + n:
                break
    table = pa.Table.from_batches(pieces)
    values = {c: table.column(c).to_pylist() for c in wanted}
    for k in range(table.num_rows):
        record = {c: v[k] for c, v in values.items()}
        rows.add(record, block.first_line + k, raw=lambda r=record: repr(r))


class _Rows:
    """Collects good and bad rows of one block as column lists."""

    def __init__(self, file_name: str, columns: Columns) -> None:
        self.file_name, self.columns = file_name, columns
        self.out: dict[str, list[Any]] = {k: [] for k in ROW_FIELDS}

    def add_line(self, raw: bytes, line: int, format: str) -> None:
        text = _decode(raw)
        if text is None:
            return self._bad(line, None, "undecodable bytes: the line is not valid UTF-8", raw)
        if line == 1:
            text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark opens the file, not the row
        if format == "text":
            return self.add({self.columns.text: text.rstrip("\r")}, line, raw=lambda: text)
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            return self._bad(line, None, f"malformed JSON: {e.msg} (column {e.colno})", raw)
        except (ValueError, RecursionError) as e:  # e.g. an integer past Python's 4300 digits, [[[... too deep
            return self._bad(line, None, f"unparsable JSON: {type(e).__name__}: {str(e)[:200]}", raw)
        if not isinstance(record, dict):
            return self._bad(line, None, f"not a JSON object: the line holds {_a(record)}", raw)
        return self.add(record, line, raw=lambda: text)

    def add_csv(self, raw: bytes, line: int, header: tuple[str, ...]) -> None:
        text = _decode(raw)
        if text is None:
            return self._bad(line, None, "undecodable bytes: the record is not valid UTF-8", raw)
        if raw.count(b'"') % 2:
            return self._bad(line, None, "malformed CSV record: a double quote that does not close (reading "
                             "goes on at the next line)", raw)
        try:
            # Strict: a stray character after a closing quote is a broken record, not a guess.
            records = _parse_csv(raw, strict=True)
        except csv.Error as e:
            return self._bad(line, None, f"malformed CSV record: {e}", raw)
        if len(records) != 1:
            return self._bad(line, None, "malformed CSV record: unbalanced double quotes", raw)
        if len(records[0]) != len(header):
            return self._bad(line, None, f"wrong number of fields: {len(records[0])}, the header has {len(header)}",
                             raw)
        return self.add(dict(zip(header, records[0], strict=True)), line, raw=lambda: text)

    def add(self, record: Mapping[str, Any], line: int, *, raw: Any) -> None:
        """Check one parsed record; ``raw()`` gives its text for the quarantine."""
        c = self.columns
        row_id, reason = (f"{self.file_name}:{line}", None) if c.id is None else _value(record, c.id, "id")
        text, reason = (None, reason) if reason else _value(record, c.text, "text")
        pair, reason = (None, reason) if reason or c.text_pair is None else _value(record, c.text_pair, "text")
        if reason:
            return self._bad(line, row_id, reason, raw())
        for key, value in zip(ROW_FIELDS, (row_id, text, pair, line, None, None), strict=True):
            self.out[key].append(value)
        return None

    def _bad(self, line: int, row_id: str | None, reason: str, raw: bytes | str) -> None:
        if row_id is None and self.columns.id is None:
            row_id = f"{self.file_name}:{line}"  # derived ids are known even for an unparsable line
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="backslashreplace")
        shown = raw.rstrip("\r\n")[:RAW_CHARS]
        for key, value in zip(ROW_FIELDS, (row_id, None, None, line, reason, shown), strict=True):
            self.out[key].append(value)


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _value(record: Mapping[str, Any], name: str, kind: str) -> tuple[str | None, str | None]:
    """(value, None) when field ``name`` holds a usable ``kind`` ("text" or "id"), else (None, reason)."""
    value = record.get(name, _MISSING)
    if value is _MISSING:
        return None, f"missing {kind}: no field {name!r}"
    if value is None:
        return None, f"missing {kind}: {name!r} is null"
    if isinstance(value, bytes):
        value = _decode(value)
        if value is None:
            return None, f"undecodable bytes: {name!r} is not valid UTF-8"
    ok = isinstance(value, str) or (kind == "id" and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        expected = "a string" if kind == "text" else "a string or an integer"
        return None, f"wrong type: {name!r} holds {_a(value)}, expected {expected}"
    value = str(value)
    if not value.strip():
        return None, f"empty {kind}: {name!r} is blank"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON escapes can spell lone surrogates, which Arrow cannot store
        return None, f"undecodable text: {name!r} holds a lone surrogate (\\ud800-\\udfff)"
    return value, None


def _a(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number"}
    return names.get(type(value), f"a {type(value).__name__}")
