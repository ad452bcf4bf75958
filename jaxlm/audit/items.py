"""What the audit looks at in a record: one adapter from `jaxlm.data.records.Record`.

Reading and validating files is `jaxlm.data.records`' job (the same reader the
trainer uses); this module only decides which parts of a normalised record are
"the text", "the input" and "the answer/label" for the measures.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator

from jaxlm.data.records import ReadStats, Record, read_records
from jaxlm.text.words import words


@dataclasses.dataclass(frozen=True)
class AuditItem:
    """One record as the audit measures see it.

    ``index`` is the record's 0-based position in the input (what ``flagged.jsonl``
    reports); ``text`` is everything a reader of the record sees; ``prompt`` and
    ``answer`` are the input and output sides (``None`` for plain text);
    ``label`` is a classification label or the NER tag sequence.
    """

    index: int
    line: int
    kind: str
    text: str
    prompt: str | None
    answer: str | None
    label: str | None
    data: dict

    @functools.cached_property
    def words(self) -> list[str]:
        """``text`` as word tokens (`text.words`), computed once for all the measures."""
        return words(self.text)

    @property
    def tags(self) -> list[str] | None:
        return self.data["tags"] if self.kind == "ner" else None

    @property
    def passage(self) -> str | None:
        passage = self.data.get("passage")
        return passage if isinstance(passage, str) else None

    @property
    def source(self) -> str | None:
        source = self.data.get("source")
        return str(source) if source is not None else None


def to_item(index: int, record: Record) -> AuditItem:
    """The audit view of one normalised record."""
    data = record.data
    label = data.get("label")
    label = None if label is None else str(label)
    if record.kind == "messages":
        prompt, answer = _split_conversation(data["messages"])
        text = "\n".join(m["content"] for m in data["messages"])
    elif record.kind == "prompt_completion":
        prompt, answer = data["prompt"], data["completion"]
        text = f"{prompt}\n{answer}"
    elif record.kind == "prompt":  # a prompt with no answer (task grpo)
        prompt = text = data["prompt"]
        answer = None
    elif record.kind == "preference":  # measured on the preferred answer; the rejected one is in the text
        prompt, answer, rejected = (_as_text(data[key]) for key in ("prompt", "chosen", "rejected"))
        text = f"{prompt}\n{answer}\n{rejected}"
    elif record.kind == "ner":
        prompt = text = " ".join(data["tokens"])
        answer, label = None, " ".join(data["tags"])
    else:  # text, possibly with a classification label
        text = data["text"]
        prompt, answer = (text, None) if label is not None else (None, None)
    return AuditItem(index, record.line, record.kind, text, prompt, answer, label, data)


def _as_text(side: str | list[dict]) -> str:
    """A preference record's side: a string (standard form) or messages (conversational form)."""
    return side if isinstance(side, str) else "\n".join(f"{m['role']}: {m['content']}" for m in side)


def _split_conversation(messages: list[dict]) -> tuple[str | None, str | None]:
    """(everything before the last assistant turn, that turn); the answer is what a model learns."""
    for position in range(len(messages) - 1, -1, -1):
        if messages[position]["role"] == "assistant":
            context = "\n".join(f"{m['role']}: {m['content']}" for m in messages[:position])
            return context or None, messages[position]["content"]
    return None, None


def read_items(path: str | os.PathLike, *, skip_bad: bool = False,
               stats: ReadStats | None = None, start: int = 0) -> Iterator[AuditItem]:
    """Streams the audit view of every record in ``path`` (any format the trainer reads);
    indices count from ``start`` (a shard's first index in the whole input)."""
    records = read_records(path, on_error="skip" if skip_bad else "raise", stats=stats)
    for index, record in enumerate(records, start):
        yield to_item(index, record)
