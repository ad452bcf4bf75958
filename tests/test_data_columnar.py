"""Parquet, Arrow, `datasets` folders and CSV: the same records as JSON lines, and errors naming file:row."""

import csv
import json
import os
from pathlib import Path

import pyarrow.feather as feather
import pytest

from jaxlm.data import columnar
from jaxlm.data.records import DataError, ReadStats, read_records
from train_helpers import as_table, write_parquet

# One record of each kind, with lists of structs, extra columns and nulls where a kind lacks a field.
RECORDS = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "source": "chat"},
    {"prompt": "2+2=", "completion": "4", "source": "math"},
    {"text": "plain prose", "label": "pos", "score": 0.5},
    {"tokens": ["Paris", "is", "big"], "tags": ["B-loc", "O", "O"]},
    {"prompt": "name a colour", "chosen": " red", "rejected": " the"},
    {"prompt": "what is 3 + 4"},
]
# What CSV can hold: strings only.
STRING_RECORDS = [{"prompt": "a, \"quoted\"\nanswer", "completion": "b"}, {"text": "t", "label": "neg"},
                  {"prompt": "p", "chosen": "c", "rejected": "r"}]


def write_jsonl(path, records) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


def write_feather(path, records) -> str:
    feather.write_feather(as_table(records), path, chunksize=2)
    return str(path)


def write_dataset(path, records) -> str:
    import datasets

    datasets.Dataset(as_table(records)).save_to_disk(str(path), num_shards=2)
    return str(path)


def write_csv(path, records) -> str:
    names = list(dict.fromkeys(name for record in records for name in record))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, names)
        writer.writeheader()
        writer.writerows(records)
    return str(path)


def read(path, **kwargs):
    return [(r.kind, r.data) for r in read_records(path, **kwargs)]


@pytest.mark.parametrize("name, write", [("a.parquet", write_parquet), ("a.arrow", write_feather),
                                         ("folder", write_dataset)])
def test_tables_give_the_records_their_jsonl_gives(tmp_path, monkeypatch, name, write):
    monkeypatch.setattr(columnar, "BATCH_ROWS", 2)  # several batches per file: rows count on across them
    path = write(tmp_path / name, RECORDS)
    assert read(path) == read(write_jsonl(tmp_path / "a.jsonl", RECORDS))
    shards = columnar.dataset_folder_shards(path) if os.path.isdir(path) else [path]
    rows_per_shard = len(RECORDS) // len(shards)  # a folder's shards split the rows evenly here
    assert [(r.path, r.line) for r in read_records(path)] == [
        (shard, row) for shard in shards for row in range(1, rows_per_shard + 1)]


def test_csv_gives_the_records_its_jsonl_gives_and_names_the_line_each_starts_on(tmp_path):
    path = write_csv(tmp_path / "a.csv", STRING_RECORDS)
    assert read(path) == read(write_jsonl(tmp_path / "a.jsonl", STRING_RECORDS))
    assert [r.line for r in read_records(path)] == [2, 4, 5]  # the first answer spans two lines


def test_a_datasets_folder_inside_a_folder_is_one_source_and_a_dataset_dict_is_refused(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", RECORDS[:1])
    write_dataset(tmp_path / "b", RECORDS[1:])
    assert read(tmp_path) == read(write_jsonl(tmp_path.parent / "all.jsonl", RECORDS))  # metadata is not read
    (tmp_path / "b" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    with pytest.raises(DataError, match="DatasetDict folder .*give one split's folder"):
        list(read_records(tmp_path))


def test_files_without_an_extension_are_recognised_by_their_first_bytes(tmp_path):
    parquet, arrow = write_parquet(tmp_path / "p", RECORDS), write_feather(tmp_path / "f", RECORDS)
    assert read(parquet) == read(arrow) == read(write_jsonl(tmp_path / "a.jsonl", RECORDS))


def truncated(path) -> str:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return path


@pytest.mark.parametrize("name, write, message", [
    ("wrong_type.parquet", lambda p: write_parquet(p, [{"text": 1}]), ":1: field 'text' must be a string, got int"),
    ("missing.parquet", lambda p: write_parquet(p, [{"prompt": "a", "completion": "b"}, {"completion": "c"}]),
     ":2: missing field 'prompt'"),
    ("bad_messages.arrow", lambda p: write_feather(p, [{"messages": [{"role": "user"}]}]),
     ":1: messages\\[0\\] must be an object with string 'role' and 'content'"),
    ("truncated.parquet", lambda p: truncated(write_parquet(p, RECORDS)), ":1: unreadable Parquet data"),
    ("truncated.arrow", lambda p: truncated(write_feather(p, RECORDS * 20)), ":[0-9]+: unreadable Arrow data"),
    ("empty.parquet", lambda p: write_parquet(p, []), ":1: empty Parquet file"),
    ("missing_column.csv", lambda p: Path(p).write_text("prompt,completion\na,b\nc\n"),
     ":3: 1 columns where the header has 2"),
    ("no_header.csv", lambda p: Path(p).write_text(""), ":1: empty CSV file"),
    ("latin1.csv", lambda p: Path(p).write_bytes("text\nok\ncaf\xe9\n".encode("latin-1")), ":3: not valid UTF-8"),
])
def test_a_bad_row_names_file_and_row(tmp_path, name, write, message):
    path = str(tmp_path / name)
    write(path)
    with pytest.raises(DataError, match=message) as error:
        list(read_records(path))
    assert str(error.value).startswith(path + ":")


def test_skip_drops_bad_rows_and_counts_them(tmp_path):
    (tmp_path / "a.csv").write_text("prompt,completion\na,b\nc\nd,e\n")
    truncated(write_parquet(tmp_path / "b.parquet", RECORDS))
    stats = ReadStats()
    assert [data for _, data in read(tmp_path, on_error="skip", stats=stats)] == [
        {"prompt": "a", "completion": "b"}, {"prompt": "d", "completion": "e"}]
    assert (stats.records, stats.skipped) == (2, 2)
    assert stats.errors[0].startswith(f"{tmp_path / 'a.csv'}:3:")
    assert stats.errors[1].startswith(f"{tmp_path / 'b.parquet'}:1:")
