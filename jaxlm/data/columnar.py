"""Rows of the table formats users' data often comes in: Parquet, Arrow IPC (feather), Hugging
Face ``datasets`` folders written by ``save_to_disk``, and CSV.

Each reader streams ``(row, value)`` pairs: ``row`` is the 1-based data row (for CSV, the line
the row starts on) and ``value`` is the row as a JSON-like dict, or a string saying why that row
(or, for a file that cannot be read on, the rest of the file) is unreadable. Turning rows into
records, and deciding whether an error stops the run, is :mod:`jaxlm.data.records`' job, so these
formats behave exactly as JSON lines do.

Nothing reads a whole table: Parquet is decoded a row group at a time (pyarrow's unit of reading;
writers make them ~1M rows or less) and Arrow a record batch at a time, and rows become Python
objects ``BATCH_ROWS`` at a time, so a file bigger than memory streams. Arrow's types become
Python's as ``to_pylist`` gives them (a ``list<struct<role, content>>`` column is a list of dicts);
a null is a missing field, since a table has every column in every row. CSV cells are strings and
an empty cell is a missing field; lists (``messages``, NER ``tokens``/``tags``) need Parquet or Arrow.

A ``save_to_disk`` folder holds ``dataset_info.json``, ``state.json`` and the ``*.arrow`` shards
that ``state.json`` lists; the shards are Arrow streams, read with pyarrow (the ``datasets``
package is not needed). A ``DatasetDict`` folder (``dataset_dict.json``, one folder per split) is
refused: reading every split would train on the test split.
"""

from __future__ import annotations

import base64
import csv
import datetime
import decimal
import json
import os
from collections.abc import Iterator
from typing import Any

Rows = Iterator[tuple[int, "dict | str"]]

BATCH_ROWS = 1024  # rows per record batch read: bounds memory, whatever the file's row groups
DATASET_MARKERS = ("dataset_info.json", "state.json")
MAX_CELL_CHARS = 2**31 - 1  # csv refuses cells over 128 KiB by default: a long document is one cell


def dataset_folder_shards(folder: str) -> list[str] | None:
    """The Arrow shards of a ``save_to_disk`` folder in their order, or None for any other folder.

    Raises ValueError for a ``DatasetDict`` folder or a ``state.json`` naming a missing shard."""
    names = set(os.listdir(folder))
    if "dataset_dict.json" in names:
        splits = sorted(n for n in names if os.path.isdir(os.path.join(folder, n)))
        raise ValueError(f"a datasets DatasetDict folder (splits: {', '.join(splits) or 'none'}): "
                         f"give one split's folder, e.g. {os.path.join(folder, splits[0] if splits else 'train')}")
    if not all(marker in names for marker in DATASET_MARKERS):
        return None
    try:
        with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
            listed = [entry["filename"] for entry in json.load(f)["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"state.json of a datasets folder does not list its shards ({e})") from None
    shards = [os.path.join(folder, name) for name in listed]
    missing = [name for name, shard in zip(listed, shards, strict=True) if not os.path.isfile(shard)]
    if missing:
        raise ValueError(f"state.json lists {missing[0]}, which is not in the folder")
    return shards


def parquet_rows(path: str) -> Rows:
    import pyarrow.parquet as pq

    def batches():
        with pq.ParquetFile(path) as file:
            yield from file.iter_batches(batch_size=BATCH_ROWS)

    yield from _batch_rows(path, batches(), "Parquet")


def arrow_rows(path: str) -> Rows:
    """Arrow IPC: the file format (``.arrow``, feather v2) or the stream format (``datasets``' shards)."""
    import pyarrow as pa

    def batches():
        with pa.memory_map(path) as source:
            try:
                reader = pa.ipc.open_file(source)
            except pa.ArrowInvalid:  # no file footer: an IPC stream, as datasets writes its shards
                source.seek(0)
                yield from pa.ipc.open_stream(source)
                return
            for index in range(reader.num_record_batches):
                yield reader.get_batch(index)

    yield from _batch_rows(path, batches(), "Arrow")


def _batch_rows(path: str, batches, kind: str) -> Rows:
    import pyarrow as pa

    row = 0
    try:
        for batch in batches:
            for values in batch.to_pylist():
                row += 1
                yield row, _json_like(values)
    except (pa.ArrowException, OSError) as e:
        yield row + 1, f"unreadable {kind} data, the rest of the file is lost ({e})"
        return
    if row == 0:
        yield 1, f"empty {kind} file: no rows"


def _json_like(value: Any) -> Any:
    """A `to_pylist` value as JSON would hold it: nulls dropped from structs, dates as ISO text."""
    if isinstance(value, dict):
        return {key: _json_like(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_json_like(item) for item in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def csv_rows(path: str) -> Rows:
    """The header row names the fields; each later row is one record."""
    not_utf8: dict[int, str] = {}  # line -> why; such a row is an error, the rows after it still read
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL_CHARS))
    with open(path, "rb") as f:
        reader = csv.reader(_decoded_lines(f, not_utf8))
        header = next(reader, None)
        if not header or 1 in not_utf8:
            yield 1, not_utf8.get(1, "empty CSV file: no header row")
            return
        if len(set(header)) != len(header) or not all(header):
            yield 1, f"the header row must name each column once, got {header}"
            return
        seen_any = False
        while True:
            line = reader.line_num + 1  # a quoted cell may span lines: the row starts here
            try:
                cells = next(reader, None)
            except csv.Error as e:
                yield line, f"malformed CSV ({e}), the rest of the file is lost"
                return
            if cells is None:
                break
            if not cells:
                continue  # a blank line
            seen_any = True
            bad = [not_utf8[n] for n in range(line, reader.line_num + 1) if n in not_utf8]
            if bad:
                yield line, bad[0]
            elif len(cells) != len(header):
                yield line, f"{len(cells)} columns where the header has {len(header)} ({', '.join(header)})"
            else:
                yield line, {name: cell for name, cell in zip(header, cells, strict=True) if cell != ""}
        if not seen_any:
            yield 2, "CSV file with a header but no rows"


def _decoded_lines(lines, not_utf8: dict[int, str]) -> Iterator[str]:
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # spreadsheets start with a byte-order mark
            raw = raw[3:]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            not_utf8[number] = f"not valid UTF-8 ({e.reason} at byte {e.start})"
            yield raw.decode("utf-8", errors="replace")
