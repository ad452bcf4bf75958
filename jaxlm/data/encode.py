"""Records -> token ids with a per-token "trained" flag (batched, HF fast tokenizer).

Causal LM / SFT: each record becomes a document of token ids plus a 0/1 flag
per token saying whether the model is trained to predict it.

* ``text``: tokens of the text (with the tokenizer's own special tokens) + EOS;
  every token is trained. A long causal-LM text comes as pieces (``repairs.text_pieces``):
  the special tokens go where the text starts, the EOS where it ends.
* ``messages``: rendered with the tokenizer's chat template. For SFT only the
  assistant turns are trained. Templates such as SmolLM2's have no
  ``{% generation %}`` markers, so the assistant spans are defined by
  prefixes: the span of turn i runs from the end of
  ``render(messages[:i], add_generation_prompt=True)`` to the end of
  ``render(messages[:i+1])`` (its end-of-turn token included, so the model
  learns to stop). :class:`~jaxlm.text.chat_template.ChatTemplate` finds them
  in one render of the compiled template where it can (the template is
  compiled once, not per call, and every render is bounded: a template from
  a hostile model file cannot spin). Character spans become token flags
  through the fast tokenizer's offset mapping.
* ``prompt_completion``: as a user/assistant chat when the tokenizer has a chat
  template, else prompt + completion as plain text; SFT trains the completion.

Documents longer than ``seq_len + 1`` tokens are cut: causal LM into
consecutive chunks (each its own document), SFT truncated (a chunk without
its prompt would teach answers without questions).

Token classification: words are tokenized with ``is_split_into_words``; the
label goes on the first sub-token of each word, -100 elsewhere.

Text classification: ``text`` records with a ``label`` (a name, or an integer
class id); ``[CLS] text [SEP]`` truncated and padded to ``seq_len``, one label
id per row.
"""

from __future__ import annotations

import contextlib
import copy
import queue

import numpy as np

from jaxlm.data.repairs import CONTINUED, CONTINUES
from jaxlm.errors import UserError
from jaxlm.tasks import IGNORE_LABEL
from jaxlm.text.chat_template import ChatTemplate, ChatTemplateError


class TokenizerPool:
    """Copies of a tokenizer, one per concurrent caller.

    tf.data calls us from several threads, and a Rust tokenizer shared by
    threads that set truncation/padding fails ("Already borrowed"). A
    thread-local would not do: tf.data's threads are not Python threads, so
    their thread-local storage is dropped after every call.
    """

    def __init__(self, tokenizer):
        self._original, self._idle = tokenizer, queue.SimpleQueue()

    @contextlib.contextmanager
    def borrow(self):
        try:
            tokenizer = self._idle.get_nowait()
        except queue.Empty:
            tokenizer = copy.deepcopy(self._original)
        try:
            yield tokenizer
        finally:
            self._idle.put(tokenizer)


def encode_batch(tokenizer, texts: list[str], *, add_special_tokens: bool,
                 max_length: int | None = None) -> list[tuple[list[int], list[int]]]:
    """(token ids, token start offsets) per text, from one call of the Rust tokenizer.

    The same tokens as ``tokenizer(texts, add_special_tokens=...,
    return_offsets_mapping=True)`` (first ``max_length`` of them if given),
    without transformers' per-text Python wrapping: ``encode_batch`` releases
    the GIL and runs on all cores, so the Python around it is what costs. The
    backend settings transformers applies per call (no padding, truncation as
    asked, ``split_special_tokens``) are applied here to ``tokenizer``, which
    must be a copy of our own (see :class:`TokenizerPool`).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # not a fast tokenizer: let transformers say what it can do
        out = tokenizer(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                        return_attention_mask=False)
        return [(ids[:max_length], [start for start, _ in offsets[:max_length]])
                for ids, offsets in zip(out["input_ids"], out["offset_mapping"], strict=False)]
    if backend.padding is not None:
        backend.no_padding()
    truncation = None if max_length is None else dict(
        max_length=max_length, stride=0, strategy="longest_first", direction="right")
    if backend.truncation != truncation:
        if truncation is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(**truncation)
    split = bool(getattr(tokenizer, "split_special_tokens", False))
    if backend.encode_special_tokens != split:
        backend.encode_special_tokens = split
    encodings = backend.encode_batch(texts, add_special_tokens=add_special_tokens)
    return [(encoding.ids, [start for start, _ in encoding.offsets]) for encoding in encodings]


class LMEncoder:
    """Documents (ids, trained flags) for the ``sft`` and ``causal_lm`` tasks."""

    def __init__(self, tokenizer, *, task: str, seq_len: int):
        if task not in ("sft", "causal_lm"):
            raise ValueError(f"LMEncoder task must be 'sft' or 'causal_lm', got {task!r}")
        self.task, self.seq_len = task, seq_len
        self.eos_id = tokenizer.eos_token_id
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.chat_template, self._template_error = None, None
        if self.has_chat_template:
            try:
                self.chat_template = ChatTemplate.from_tokenizer(tokenizer)
            except ChatTemplateError as e:  # raised when a record needs it: text-only data trains anyway
                self._template_error = e
        self._tokenizers = TokenizerPool(tokenizer)

    def render(self, kind: str, data: dict) -> tuple[str, list[tuple[int, int]], bool]:
        """(text, trained character spans, is_plain_text) for one record."""
        if kind == "prompt_completion" and self.has_chat_template:
            kind, data = "messages", {"messages": [
                {"role": "user", "content": data["prompt"]},
                {"role": "assistant", "content": data["completion"]}]}
        if kind == "text":
            return data["text"], [(0, len(data["text"]))], True
        if kind == "prompt_completion":
            text = data["prompt"] + data["completion"]
            start = len(data["prompt"]) if self.task == "sft" else 0
            return text, [(start, len(text))], True
        if kind == "messages":
            return self._render_chat(data["messages"])
        raise UserError(f"{kind!r} records cannot be used for the {self.task} task")

    def _render_chat(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]], bool]:
        if self._template_error is not None:
            raise self._template_error
        if self.chat_template is None:
            raise UserError("'messages' records need a tokenizer with a chat_template")
        if self.task == "sft":
            return (*self.chat_template.assistant_spans(messages), False)
        full = self.chat_template.render(messages)
        return full, [(0, len(full))], False

    def encode(self, records: list[tuple[str, dict]]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """Per record, its documents as (ids int32, trained int32) pairs.

        Usually one document; a long causal-LM record gives several chunks, and
        a record with fewer than two tokens gives none (nothing to predict).
        """
        with self._tokenizers.borrow() as tokenizer:
            rendered = [self.render(kind, data) for kind, data in records]
            # plain text gets the tokenizer's special tokens and an EOS; a piece of a longer text
            # (repairs.text_pieces) only where that text starts and ends
            pairs = list(zip(rendered, records, strict=True))
            special = [plain and not data.get(CONTINUED) for (_, _, plain), (_, data) in pairs]
            eos = [plain and not data.get(CONTINUES) for (_, _, plain), (_, data) in pairs]
            encoded: list = [None] * len(rendered)
            for with_special in (True, False):
                batch = [i for i, s in enumerate(special) if s == with_special]
                if not batch:
                    continue
                # SFT keeps the first seq_len + 1 tokens (see _cut): let the tokenizer drop the rest
                # before they become Python objects. Not where special tokens are added, since
                # truncation would keep room for them.
                keep = self.seq_len + 1 if self.task == "sft" and not with_special else None
                tokens = encode_batch(tokenizer, [rendered[i][0] for i in batch],
                                      add_special_tokens=with_special, max_length=keep)
                for i, (ids, starts) in zip(batch, tokens, strict=True):
                    encoded[i] = self._document(rendered[i][1], ids, starts, append_eos=eos[i])
        return [self._cut(ids, trained) for ids, trained in encoded]

    def _document(self, spans, ids, starts, *, append_eos: bool):
        starts = np.asarray(starts, dtype=np.int64)
        trained = np.zeros(len(ids), dtype=np.int32)
        for start, end in spans:
            trained[(starts >= start) & (starts < end)] = 1
        ids = np.asarray(ids, dtype=np.int32)
        if append_eos and self.eos_id is not None and (len(ids) == 0 or ids[-1] != self.eos_id):
            ids = np.append(ids, np.int32(self.eos_id))
            trained = np.append(trained, np.int32(1))
        return ids, trained

    def _cut(self, ids: np.ndarray, trained: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        limit = self.seq_len + 1  # seq_len input/target pairs need seq_len + 1 tokens
        if len(ids) <= limit:
            return [(ids, trained)] if len(ids) >= 2 else []
        if self.task == "sft":
            return [(ids[:limit], trained[:limit])]
        return [(ids[k:k + limit], trained[k:k + limit])
                for k in range(0, len(ids) - 1, self.seq_len) if len(ids) - k >= 2]


class _RowEncoder:
    """Fixed-length rows of encoder inputs (padded to ``seq_len``) and label ids, for the labelling tasks.

    ``ROW_SHAPES`` names each output and whether it has a ``seq`` axis after the row axis."""

    ROW_SHAPES = {"input_ids": "seq", "attention_mask": "seq", "token_type_ids": "seq", "labels": "seq"}

    def __init__(self, tokenizer, *, label_names: list[str], seq_len: int):
        self.label_names, self.seq_len = list(label_names), seq_len
        self.label_ids = {name: i for i, name in enumerate(self.label_names)}
        self._tokenizers = TokenizerPool(tokenizer)

    def _tokenize(self, inputs: list, **options):
        with self._tokenizers.borrow() as tokenizer:
            return tokenizer(inputs, truncation=True, max_length=self.seq_len, padding="max_length",
                             return_token_type_ids=True, **options)

    @staticmethod
    def _rows(out, labels: np.ndarray) -> dict[str, np.ndarray]:
        return {"input_ids": np.asarray(out["input_ids"], dtype=np.int32),
                "attention_mask": np.asarray(out["attention_mask"], dtype=np.int32),
                "token_type_ids": np.asarray(out["token_type_ids"], dtype=np.int32),
                "labels": labels}


class NerEncoder(_RowEncoder):
    """Rows for token classification, labels on first sub-tokens."""

    def encode(self, records: list[tuple[str, dict]]) -> dict[str, np.ndarray]:
        sentences = [(data["tokens"], data["tags"]) for _, data in records]
        out = self._tokenize([tokens for tokens, _ in sentences], is_split_into_words=True)
        labels = np.full((len(sentences), self.seq_len), IGNORE_LABEL, dtype=np.int32)
        for row, (_, tags) in enumerate(sentences):
            previous = None
            for position, word in enumerate(out.word_ids(row)):
                if word is not None and word != previous:
                    labels[row, position] = self.label_ids[tags[word]]
                previous = word
        return self._rows(out, labels)


def label_of(data: dict) -> str:
    """A classification record's label as a name: strings as they are, integer class ids as "0", "1", ...

    ValueError naming what is wrong (no text, no label, a label that is neither)."""
    if not isinstance(data.get("text"), str):
        raise ValueError("classification records need a string 'text' field")
    label = data.get("label")
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise ValueError(f"classification records need a 'label' (a name or an integer class id), got {label!r}")
    return str(label)


def sorted_labels(labels) -> list[str]:
    """Label names in a stable order: integer ids numerically, then names alphabetically."""
    return sorted(labels, key=lambda name: (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name))


class ClassificationEncoder(_RowEncoder):
    """Rows for text classification: one sequence and one label id per row."""

    ROW_SHAPES = {**_RowEncoder.ROW_SHAPES, "labels": ""}

    def encode(self, records: list[tuple[str, dict]]) -> dict[str, np.ndarray]:
        labels = np.asarray([self.label_ids[label_of(data)] for _, data in records], dtype=np.int32)
        return self._rows(self._tokenize([data["text"] for _, data in records]), labels)


def word_tags(labels: np.ndarray, predictions: np.ndarray,
              label_names: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Word-level (true, predicted) tag sequences for seqeval.

    ``labels``/``predictions`` are int arrays [B, T]; a word is a position whose
    label is not -100 (its first sub-token). Rows without words are dropped.
    """
    true_tags, predicted_tags = [], []
    for row_labels, row_predictions in zip(np.asarray(labels), np.asarray(predictions), strict=False):
        words = row_labels != IGNORE_LABEL
        if words.any():
            true_tags.append([label_names[i] for i in row_labels[words]])
            predicted_tags.append([label_names[i] for i in row_predictions[words]])
    return true_tags, predicted_tags
