"""Reading training records from files, with errors that name file and line.

These on-disk formats are understood:

* **jsonl** (`.jsonl`, `.json` holding one JSON object per line). Each object is
  normalised to one of six record kinds, picked by which fields it has:
  ``chosen``/``rejected`` -> ``preference`` (with ``prompt``: TRL's standard form of three
  strings, or its conversational form of three message lists); ``messages`` -> ``messages``;
  ``prompt`` + ``completion`` -> ``prompt_completion``; ``prompt`` alone -> ``prompt`` (GRPO samples the
  answers); ``text`` -> ``text``;
  ``tokens`` + ``tags`` -> ``ner``. ``fields`` renames the
  file's field names to these canonical ones (``{"text": "body"}``). Every other
  key of the object (provenance, ``source``, ``passage_id``...) is kept in ``data``.
* **text** (`.txt`, `.md`): a whole file is ONE document (``{"text": ...}``).
  Files are not split into paragraphs because causal-LM packing splits long
  documents anyway, and a paragraph split would break prose like poetry or code.
* **conll** (`.conll`, `.tsv`, `.bio`, or any file whose lines are
  ``token<TAB>tag``): one sentence per block, blank line between sentences;
  extra middle columns are ignored (token first, tag last). ``-DOCSTART-`` lines
  are skipped.

* **tables**: Parquet (`.parquet`), Arrow IPC (`.arrow`, `.feather`), CSV (`.csv`, the header row
  names the fields), and a Hugging Face ``datasets`` folder written by ``save_to_disk``: each row is
  one object, normalised as a JSON line is; ``path:N`` names the 1-based data row (for CSV, the
  line). See :mod:`jaxlm.data.columnar`.

A folder is read recursively, files in sorted order, each file by its own format; a ``datasets``
folder inside it is read as one dataset, its shards in the order ``state.json`` gives.

Bad input never disappears silently: with ``on_error="raise"`` it raises
:class:`DataError` whose message starts with ``path:line:``; with
``on_error="skip"`` the record is dropped and counted in :class:`ReadStats`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from collections.abc import Collection, Iterator
from typing import Any

from jaxlm.data import columnar
from jaxlm.errors import UserError
from jaxlm.text.messages import check_messages

RECORD_KINDS = ("messages", "prompt_completion", "text", "ner", "preference")
FORMATS = ("auto", "jsonl", "text", "conll", "parquet", "arrow", "csv")
MAX_KEPT_ERRORS = 20  # ReadStats keeps the first few messages, the count is exact

_EXTENSION_FORMAT = {
    ".jsonl": "jsonl", ".json": "jsonl",
    ".txt": "text", ".md": "text",
    ".conll": "conll", ".tsv": "conll", ".bio": "conll",
    ".parquet": "parquet", ".arrow": "arrow", ".feather": "arrow", ".csv": "csv",
}
_MAGIC_FORMAT = {b"PAR1": "parquet", b"ARROW1": "arrow"}  # how files without an extension begin
_BIO_TAG = re.compile(r"^(O|[BI]-\S+)$")


class DataError(UserError):
    """Bad input data. The message starts with ``path:line:``."""

    label = "data error"

    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line = path, line


@dataclasses.dataclass(frozen=True)
class Record:
    """One training example as read from disk, normalised.

    ``kind`` is one of :data:`RECORD_KINDS`; ``data`` holds
    ``{"messages": [{"role", "content"}, ...]}``, ``{"prompt", "completion"}``,
    ``{"text"}``, ``{"tokens": [...], "tags": [...]}`` or ``{"prompt", "chosen", "rejected"}``,
    plus any extra keys.
    """

    path: str
    line: int
    kind: str
    data: dict


@dataclasses.dataclass
class ReadStats:
    """Counters that :func:`read_records` adds to (pass one in to accumulate)."""

    records: int = 0
    skipped: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)

    def note_error(self, error: DataError) -> None:
        self.skipped += 1
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(str(error))


def read_records(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    fields: dict[str, str] | None = None,
    on_error: str = "raise",
    stats: ReadStats | None = None,
    allowed_tags: Collection[str] | None = None,
) -> Iterator[Record]:
    """Streams the records of a file or folder (see the module docstring).

    ``allowed_tags`` (CoNLL only): when given, a tag outside it is an error;
    otherwise any well-formed BIO tag (``O``, ``B-X``, ``I-X``) is accepted.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    stats = stats if stats is not None else ReadStats()
    path = os.fspath(path)
    for file_path in list_files(path):
        file_format = format if format != "auto" else detect_format(file_path)
        reader = _READERS[file_format]
        for item in reader(file_path, fields or {}, allowed_tags):
            if isinstance(item, DataError):
                if on_error == "raise":
                    raise item
                stats.note_error(item)
            else:
                stats.records += 1
                yield item


def detect_format(path: str) -> str:
    """Format of one file: by extension, else by its first bytes or first line."""
    extension = os.path.splitext(path)[1].lower()
    if extension in _EXTENSION_FORMAT:
        return _EXTENSION_FORMAT[extension]
    with open(path, "rb") as f:
        start = f.read(8)
        for magic, format in _MAGIC_FORMAT.items():
            if start.startswith(magic):
                return format
        f.seek(0)
        for raw in f:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            if line.startswith("{"):
                return "jsonl"
            return "conll" if len(line.split("\t")) >= 2 else "text"
    return "text"


def list_files(path: str) -> list[str]:
    """The files ``read_records`` reads for ``path``, in its order."""
    if os.path.isdir(path):
        found = []
        for root, dirs, files in os.walk(path):
            try:
                shards = columnar.dataset_folder_shards(root)
            except ValueError as e:
                raise DataError(root, 0, str(e)) from None
            if shards is not None:  # one dataset: its shards, not its metadata files
                dirs.clear()
                found += shards
                continue
            dirs.sort()
            found += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
        if not found:
            raise DataError(path, 0, "folder holds no files")
    elif not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    else:
        found = [path]
    for file in found:
        mode = os.stat(file).st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):  # /dev/zero: one endless line, read for ever
            raise DataError(file, 0, "a device, not a data file")
    return found


def _decoded_lines(path: str) -> Iterator[tuple[int, str | DataError]]:
    """(line number, text) per line, or a DataError for a non-UTF-8 line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, DataError(path, number, f"not valid UTF-8 ({e.reason} at byte {e.start})")


# --- JSON lines -------------------------------------------------------------

def _read_jsonl(path: str, fields: dict[str, str], allowed_tags) -> Iterator[Record | DataError]:
    seen_any = False
    for number, line in _decoded_lines(path):
        if isinstance(line, DataError):
            seen_any = True
            yield line
            continue
        if not line.strip():
            continue
        seen_any = True
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield DataError(path, number, f"malformed JSON ({e.msg} at column {e.colno})")
            continue
        yield _record(path, number, obj, fields)
    if not seen_any:
        yield DataError(path, 1, "empty file: no JSON records")


def _record(path: str, number: int, obj: Any, fields: dict[str, str]) -> Record | DataError:
    try:
        kind, data = normalize_json(obj, fields)
    except ValueError as e:
        return DataError(path, number, str(e))
    return Record(path, number, kind, data)


def normalize_json(obj: Any, fields: dict[str, str] | None = None) -> tuple[str, dict]:
    """(kind, data) for one JSON object; ValueError naming what is missing."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    fields = fields or {}
    renamed_from = {fields.get(name, name): name for name in
                    ("messages", "prompt", "completion", "text", "tokens", "tags", "chosen", "rejected")}
    data = {renamed_from.get(key, key): value for key, value in obj.items()}
    if "chosen" in data or "rejected" in data:
        check_preference(data, fields)
        return "preference", data
    if "messages" in data:
        check_messages(data["messages"])
        return "messages", data
    if "prompt" in data and "completion" not in data:  # a prompt to sample answers to (task grpo)
        _check_string(data, "prompt", fields)
        return "prompt", data
    if "prompt" in data or "completion" in data:
        for name in ("prompt", "completion"):
            _check_string(data, name, fields)
        return "prompt_completion", data
    if "text" in data:
        _check_string(data, "text", fields)
        return "text", data
    if "tokens" in data and "tags" in data:
        check_ner(data["tokens"], data["tags"])
        return "ner", data
    wanted = ", ".join(repr(fields.get(n, n)) for n in ("messages", "prompt", "text", "tokens"))
    raise ValueError(f"missing field: expected one of {wanted} (keys present: {sorted(obj)})")


PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")


def check_preference(data: dict, fields: dict) -> None:
    """ValueError unless `data` is a preference pair that can teach something: prompt, chosen and rejected all
    strings (TRL's standard form) or all message lists (its conversational form), with non-empty, different
    completions."""
    name = {field: repr(fields.get(field, field)) for field in PREFERENCE_FIELDS}
    for field in PREFERENCE_FIELDS:
        if field not in data:
            raise ValueError(f"missing field {name[field]} (a preference record has {', '.join(name.values())})")
    values = [data[field] for field in PREFERENCE_FIELDS]
    if all(isinstance(v, list) for v in values):
        for field in PREFERENCE_FIELDS:
            check_messages(data[field], fields.get(field, field))
        empty = [f for f in ("chosen", "rejected") if not any(m["content"].strip() for m in data[f])]
    elif all(isinstance(v, str) for v in values):
        empty = [f for f in ("chosen", "rejected") if not data[f].strip()]
    else:
        raise ValueError(f"{', '.join(name.values())} must all be strings (standard form) or all message lists "
                         f"(conversational form), got {', '.join(type(v).__name__ for v in values)}")
    if empty:
        raise ValueError(f"field {name[empty[0]]} is an empty completion")
    if data["chosen"] == data["rejected"]:
        raise ValueError(f"fields {name['chosen']} and {name['rejected']} are the same completion: "
                         "the pair prefers nothing")


def _check_string(data: dict, name: str, fields: dict) -> None:
    if name not in data:
        raise ValueError(f"missing field {fields.get(name, name)!r}")
    if not isinstance(data[name], str):
        raise ValueError(f"field {fields.get(name, name)!r} must be a string, "
                         f"got {type(data[name]).__name__}")


def check_ner(tokens: Any, tags: Any, allowed_tags: Collection[str] | None = None) -> None:
    """ValueError unless tokens/tags are equal-length string lists of valid tags."""
    if not (isinstance(tokens, list) and isinstance(tags, list) and len(tokens) == len(tags)):
        raise ValueError("'tokens' and 'tags' must be lists of the same length")
    for tag in tags:
        _check_tag(tag, allowed_tags)


def _check_tag(tag: Any, allowed_tags: Collection[str] | None) -> None:
    if allowed_tags is not None:
        if tag not in allowed_tags:
            raise ValueError(f"unknown tag {tag!r} (known: {sorted(allowed_tags)})")
    elif not (isinstance(tag, str) and _BIO_TAG.match(tag)):
        raise ValueError(f"unknown tag {tag!r}: expected 'O', 'B-<type>' or 'I-<type>'")


# --- plain text -------------------------------------------------------------

def _read_text(path: str, fields, allowed_tags) -> Iterator[Record | DataError]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        yield DataError(path, line, f"not valid UTF-8 ({e.reason} at byte {e.start})")
        return
    if not text.strip():
        yield DataError(path, 1, "empty file: no text")
        return
    yield Record(path, 1, "text", {"text": text})


# --- CoNLL ------------------------------------------------------------------

def _read_conll(path: str, fields, allowed_tags) -> Iterator[Record | DataError]:
    tokens, tags, start, error = [], [], 0, None
    seen_any = False

    def finish():
        if error is not None:
            return error
        return Record(path, start, "ner", {"tokens": tokens, "tags": tags}) if tokens else None

    for number, line in _decoded_lines(path):
        if isinstance(line, str) and (not line.strip() or line.startswith("-DOCSTART-")):
            item = finish()
            if item is not None:
                yield item
            tokens, tags, start, error = [], [], 0, None
            continue
        seen_any = True
        start = start or number
        if error is not None:
            continue  # the rest of a bad sentence is dropped with it
        if isinstance(line, DataError):
            error = line
            continue
        columns = line.rstrip("\r\n").split("\t")
        if len(columns) < 2 or not columns[0] or not columns[-1].strip():
            error = DataError(path, number, f"expected 'token<TAB>tag', got {line.rstrip()!r}")
            continue
        try:
            _check_tag(columns[-1].strip(), allowed_tags)
        except ValueError as e:
            error = DataError(path, number, str(e))
            continue
        tokens.append(columns[0])
        tags.append(columns[-1].strip())
    item = finish()
    if item is not None:
        yield item
    if not seen_any:
        yield DataError(path, 1, "empty file: no sentences")


# --- tables -----------------------------------------------------------------

def _table_reader(rows):
    def read(path: str, fields: dict[str, str], allowed_tags) -> Iterator[Record | DataError]:
        for number, row in rows(path):
            yield DataError(path, number, row) if isinstance(row, str) else _record(path, number, row, fields)

    return read


_READERS = {"jsonl": _read_jsonl, "text": _read_text, "conll": _read_conll,
            "parquet": _table_reader(columnar.parquet_rows), "arrow": _table_reader(columnar.arrow_rows),
            "csv": _table_reader(columnar.csv_rows)}
