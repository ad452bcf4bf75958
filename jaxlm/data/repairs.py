"""What training changes in records as read, each change counted and warned by the pipeline.

* ``cap_length``: a record longer than ``data.max_record_chars`` is split (causal-LM text,
  which is cut into chunks anyway) or truncated. Tokenizing a multi-megabyte record costs
  seconds and about 120 bytes of memory per character, in every epoch and in every parallel
  tokenizer call that meets it: one 5.7 MB record took a run from ~1 GB to ~3.7 GB.
* ``to_iob2``: NER tags are taken as IOB2.

Reading itself (:mod:`jaxlm.data.records`) changes nothing: the audit sees records as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from jaxlm.data.records import Record


def cap_length(record: Record, max_chars: int, *, split_text: bool = False) -> tuple[list[Record], str | None]:
    """The record held to ``max_chars`` characters of content: (records, None | "split" | "truncated").

    A ``text`` record with ``split_text`` (causal LM, which cuts documents into chunks anyway)
    becomes several records of at most ``max_chars``, cut before a whitespace where there is
    one; any other record keeps its first ``max_chars`` characters of content (later messages
    dropped, a NER sentence cut before the token that does not fit). ``max_chars <= 0``: no cap.
    """
    if max_chars <= 0 or _content_length(record) <= max_chars:
        return [record], None
    data = record.data
    if record.kind == "text" and split_text:
        return [dataclasses.replace(record, data={**data, "text": piece})
                for piece in _pieces(data["text"], max_chars)], "split"
    if record.kind == "text":
        data = {**data, "text": data["text"][:max_chars]}
    elif record.kind == "prompt":
        data = {**data, "prompt": data["prompt"][:max_chars]}
    elif record.kind == "prompt_completion":
        prompt = data["prompt"][:max_chars]
        data = {**data, "prompt": prompt, "completion": data["completion"][:max_chars - len(prompt)]}
    elif record.kind == "messages":
        data = {**data, "messages": _first_chars(data["messages"], max_chars)}
    elif record.kind == "preference":  # each completion is read after the prompt: each keeps what is left
        prompt = _first_chars(data["prompt"], max_chars)
        left = max_chars - _length(prompt)
        data = {**data, "prompt": prompt, "chosen": _first_chars(data["chosen"], left),
                "rejected": _first_chars(data["rejected"], left)}
    else:  # ner
        count, left = 0, max_chars
        for token in data["tokens"]:
            left -= len(token)
            if left < 0:
                break
            count += 1
        data = {**data, "tokens": data["tokens"][:count], "tags": data["tags"][:count]}
    return [dataclasses.replace(record, data=data)], "truncated"


def _first_chars(content: str | list[dict], max_chars: int) -> str | list[dict]:
    """A text's, or a message list's, first `max_chars` characters of content (later messages dropped)."""
    if isinstance(content, str):
        return content[:max(max_chars, 0)]
    kept, left = [], max_chars
    for message in content:
        if left <= 0:
            break
        kept.append({**message, "content": message["content"][:left]})
        left -= len(kept[-1]["content"])
    return kept


def _length(content: str | list[dict]) -> int:
    return len(content) if isinstance(content, str) else sum(len(m["content"]) for m in content)


def _content_length(record: Record) -> int:
    data = record.data
    if record.kind == "text":
        return len(data["text"])
    if record.kind == "prompt":
        return len(data["prompt"])
    if record.kind == "prompt_completion":
        return len(data["prompt"]) + len(data["completion"])
    if record.kind == "messages":
        return _length(data["messages"])
    if record.kind == "preference":
        return _length(data["prompt"]) + max(_length(data["chosen"]), _length(data["rejected"]))
    return sum(map(len, data["tokens"]))


# Causal-LM text is tokenized in pieces of at most this many characters. tf.data hands the tokenizer a fixed
# number of records per call (stages.PYTHON_BATCH), so a record's length is the work of a call: one 10 MB
# line in 1 MB pieces made each call tokenize 64 MB and pack 20M tokens, minutes and gigabytes before the
# first batch of a few hundred tokens.
PIECE_CHARS = 16_384
CONTINUED, CONTINUES = "_continued", "_continues"  # a piece's place in its text: not first, not last


def text_pieces(record: Record, size: int = PIECE_CHARS) -> list[Record]:
    """A causal-LM ``text`` record as consecutive pieces of at most ``size`` characters that tokenize as the
    whole would: only the first gets the tokenizer's leading special tokens, only the last the EOS (flags
    CONTINUED, CONTINUES; see encode.LMEncoder). Not a change to the data, so not counted: the tokens are
    the same, cut before a whitespace, except that a chunk of seq_len tokens also ends where a piece does."""
    text = record.data["text"]
    if len(text) <= size:
        return [record]
    parts = list(_pieces(text, size))
    return [dataclasses.replace(record, data={**record.data, "text": part, CONTINUED: k > 0,
                                              CONTINUES: k < len(parts) - 1})
            for k, part in enumerate(parts)]


def _pieces(text: str, size: int) -> Iterator[str]:
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):  # cut before a whitespace: the next piece starts with it, as the tokenizer splits
            cut = max(text.rfind(c, start + 1, end + 1) for c in " \n\t")
            end = cut if cut > start else end
        yield text[start:end]
        start = end


def to_iob2(tags: list[str]) -> tuple[list[str], int]:
    """(tags in IOB2, how many changed): an ``I-X`` that starts an entity (after ``O`` or another
    type) becomes ``B-X``. Exact for IOB1 files; in IOB2 files it repairs what seqeval's default
    mode would read the same way. Training takes its NER data as IOB2 (and says how many it repaired)."""
    out, changed, previous = list(tags), 0, "O"
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            out[i] = "B-" + tag[2:]
            changed += 1
        previous = tag
    return out, changed
