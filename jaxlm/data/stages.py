"""The tf.data stages between records and batches.

Records travel as JSON strings (``{"kind", "data"}``) with their source id and
their index within that source's stream (epochs included). Python runs only in
the batched ``tf.numpy_function`` stages that need it: augmentation and the
HF tokenizer. The tokenizer stage renders its batch's chats (one render each,
see :mod:`jaxlm.text.chat_template`) and hands all its texts to the Rust
tokenizer in one call, which runs outside the GIL on every core while other
batches are augmented. Packing and batching stay in the TensorFlow graph.

Every parallel map keeps its order (tf.data's default ``deterministic``), and
augmentation seeds its random generator per example from (seed, source id,
index), so a pipeline rebuilt with the same settings yields the same batches.

Bad input found inside a stage (a chat template that cannot render, records
that never give a training example) must reach the user as one line: an
exception raised in a ``tf.numpy_function`` would arrive as a TensorFlow
error after TF logged its traceback. So the encoding stages record the first
:class:`~jaxlm.errors.UserError` in a :class:`Faults` and end the stream
cleanly, and the pipeline raises it as it is.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import tensorflow as tf

from jaxlm.data.augment import Augmenter
from jaxlm.data.encode import ClassificationEncoder, LMEncoder, NerEncoder
from jaxlm.data.ner_augment import NerAugmenter
from jaxlm.data.preference import PreferenceEncoder
from jaxlm.errors import UserError

PYTHON_BATCH = 64  # records per numpy_function call: amortises the TF <-> Python hop


class Faults:
    """The first user error raised inside a stage; once there is one, the stages end the stream."""

    def __init__(self):
        self.first: UserError | None = None
        self._lock = threading.Lock()

    def record(self, error: UserError) -> None:
        with self._lock:
            if self.first is None:
                self.first = error

    def raise_first(self) -> None:
        if self.first is not None:
            raise self.first


class ExampleWatch:
    """Notices a stream whose records never give a training example (all empty, say), which would
    otherwise make the packed, repeated stream wait forever for its first row."""

    def __init__(self, sources: list[str], records_per_pass: int):
        self.sources = sources
        self.limit = 4 * max(records_per_pass, PYTHON_BATCH)  # mixing draws unevenly: allow a few passes
        self.records = self.examples = 0

    def saw(self, records: int, examples: int) -> None:
        self.records += records
        self.examples += examples
        if not self.examples and self.records >= self.limit:
            raise UserError(f"{', '.join(self.sources)}: none of the {self.records:,} records read gives a training "
                            "example (each needs 2 or more tokens, and a trained one after the first): "
                            "are the records empty?")


def _guarded(encode, faults: Faults, empty: tuple):
    """`encode` with a trailing "failed" flag: a UserError is recorded in `faults` instead of raised."""

    def call(*args):
        if faults.first is None:
            try:
                return (*encode(*args), False)
            except UserError as e:
                faults.record(e)
        return (*empty, True)

    return call


def _records(batch: np.ndarray) -> list[tuple[str, dict]]:
    decoded = [json.loads(item) for item in batch]
    return [(item["kind"], item["data"]) for item in decoded]


def augment(dataset: tf.data.Dataset, augmenter: Augmenter,
            ner_augmenter: NerAugmenter | None) -> tf.data.Dataset:
    """Batched records -> the same records with augmented inputs."""

    def augment_batch(records, source_ids, indices):
        out = []
        for (kind, data), source_id, index in zip(_records(records), source_ids, indices, strict=False):
            rng = augmenter.rng_for(int(source_id), int(index))
            if kind == "ner" and ner_augmenter is not None:
                tokens, tags = ner_augmenter.augment(data["tokens"], data["tags"], rng)
                data = {**data, "tokens": tokens, "tags": tags}
            else:
                data = augmenter.augment_record(kind, data, rng)
            out.append(json.dumps({"kind": kind, "data": data}, ensure_ascii=False).encode("utf-8"))
        return np.array(out, dtype=object)

    def stage(batch):
        records = tf.numpy_function(augment_batch, [batch["record"], batch["source_id"],
                                                    batch["index"]], tf.string, stateful=False)
        records.set_shape(batch["record"].shape)
        return {**batch, "record": records}

    return dataset.map(stage, num_parallel_calls=tf.data.AUTOTUNE)


def encode_documents(dataset: tf.data.Dataset, encoder: LMEncoder, faults: Faults,
                     watch: ExampleWatch) -> tf.data.Dataset:
    """Batched records -> one element per document: ids, trained flags, source id."""

    def concat(parts):
        return np.concatenate(parts) if parts else np.zeros([0], np.int32)

    def encode_batch(records, source_ids):
        ids, trained, lengths, sources = [], [], [], []
        examples = 0
        for documents, source_id in zip(encoder.encode(_records(records)), source_ids, strict=False):
            for document_ids, document_trained in documents:
                ids.append(document_ids)
                trained.append(document_trained)
                lengths.append(len(document_ids))
                sources.append(source_id)
                examples += bool(document_trained[1:].any())
        watch.saw(len(records), examples)
        return (concat(ids), concat(trained), np.asarray(lengths, np.int64),
                np.asarray(sources, np.int32))

    empty = (np.zeros([0], np.int32), np.zeros([0], np.int32), np.zeros([0], np.int64), np.zeros([0], np.int32))

    def stage(batch):
        ids, trained, lengths, sources, failed = tf.numpy_function(
            _guarded(encode_batch, faults, empty), [batch["record"], batch["source_id"]],
            [tf.int32, tf.int32, tf.int64, tf.int32, tf.bool], stateful=False)
        lengths.set_shape([None])
        sources.set_shape([None])
        failed.set_shape([])
        return {"ids": tf.RaggedTensor.from_row_lengths(tf.reshape(ids, [-1]), lengths),
                "trained": tf.RaggedTensor.from_row_lengths(tf.reshape(trained, [-1]), lengths),
                "source_id": sources, "failed": failed}

    return (dataset.map(stage, num_parallel_calls=tf.data.AUTOTUNE)
            .take_while(lambda documents: tf.logical_not(documents["failed"]))
            .map(lambda documents: {k: v for k, v in documents.items() if k != "failed"})
            .unbatch())


def encode_rows(dataset: tf.data.Dataset, encoder: NerEncoder | ClassificationEncoder | PreferenceEncoder,
                faults: Faults) -> tf.data.Dataset:
    """Batched records -> one fixed-length row per record (token or text classification, preference pairs).

    `encoder.ROW_SHAPES` names each output's shape after the row axis: "seq" [seq_len], "pair"
    [2, seq_len] (a chosen and a rejected sequence), "" none."""
    keys = tuple(encoder.ROW_SHAPES)
    shape = {k: {"seq": [encoder.seq_len], "pair": [2, encoder.seq_len], "": []}[encoder.ROW_SHAPES[k]] for k in keys}

    def encode_batch(records):
        encoded = encoder.encode(_records(records))
        return tuple(encoded[k] for k in keys)

    empty = tuple(np.zeros([0, *shape[k]], np.int32) for k in keys)

    def stage(batch):
        *arrays, failed = tf.numpy_function(_guarded(encode_batch, faults, empty), [batch["record"]],
                                            [tf.int32] * len(keys) + [tf.bool], stateful=False)
        row = dict(zip(keys, arrays, strict=False))
        for key, value in row.items():
            value.set_shape([None, *shape[key]])
        failed.set_shape([])
        rows = tf.shape(row["input_ids"])[0]  # 0 once failed
        tokens = row["attention_mask"] > 0
        sources = tf.reshape(batch["source_id"][:rows], [-1] + [1] * (tokens.shape.rank - 1))
        row["source_id"] = tf.where(tokens, sources, -1)
        return row, failed

    return (dataset.map(stage, num_parallel_calls=tf.data.AUTOTUNE)
            .take_while(lambda row, failed: tf.logical_not(failed))
            .map(lambda row, failed: row)
            .unbatch())
