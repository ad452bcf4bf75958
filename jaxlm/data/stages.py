"""The tf.data stages between records and batches.

Records travel as JSON strings (``{"kind", "data"}``) with their source id and
their index within that source's stream (epochs included). Python runs only in
the batched ``tf.numpy_function`` stages that need it: augmentation and the
HF tokenizer. The tokenizer stage renders its batch's chats (one render each,
see :mod:`jaxlm.data.chat_template`) and hands all its texts to the Rust
tokenizer in one call, which runs outside the GIL on every core while other
batches are augmented. Packing and batching stay in the TensorFlow graph.

Every parallel map keeps its order (tf.data's default ``deterministic``), and
augmentation seeds its random generator per example from (seed, source id,
index), so a pipeline rebuilt with the same settings yields the same batches.
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from jaxlm.data.augment import Augmenter
from jaxlm.data.encode import ClassificationEncoder, LMEncoder, NerEncoder
from jaxlm.data.ner_augment import NerAugmenter

PYTHON_BATCH = 64  # records per numpy_function call: amortises the TF <-> Python hop


def _records(batch: np.ndarray) -> list[tuple[str, dict]]:
    decoded = [json.loads(item) for item in batch]
    return [(item["kind"], item["data"]) for item in decoded]


def augment(dataset: tf.data.Dataset, augmenter: Augmenter,
            ner_augmenter: NerAugmenter | None) -> tf.data.Dataset:
    """Batched records -> the same records with augmented inputs."""

    def augment_batch(records, source_ids, indices):
        out = []
        for (kind, data), source_id, index in zip(_records(records), source_ids, indices):
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


def encode_documents(dataset: tf.data.Dataset, encoder: LMEncoder) -> tf.data.Dataset:
    """Batched records -> one element per document: ids, trained flags, source id."""

    def concat(parts):
        return np.concatenate(parts) if parts else np.zeros([0], np.int32)

    def encode_batch(records, source_ids):
        ids, trained, lengths, sources = [], [], [], []
        for documents, source_id in zip(encoder.encode(_records(records)), source_ids):
            for document_ids, document_trained in documents:
                ids.append(document_ids)
                trained.append(document_trained)
                lengths.append(len(document_ids))
                sources.append(source_id)
        return (concat(ids), concat(trained), np.asarray(lengths, np.int64),
                np.asarray(sources, np.int32))

    def stage(batch):
        ids, trained, lengths, sources = tf.numpy_function(
            encode_batch, [batch["record"], batch["source_id"]],
            [tf.int32, tf.int32, tf.int64, tf.int32], stateful=False)
        lengths.set_shape([None])
        sources.set_shape([None])
        return {"ids": tf.RaggedTensor.from_row_lengths(tf.reshape(ids, [-1]), lengths),
                "trained": tf.RaggedTensor.from_row_lengths(tf.reshape(trained, [-1]), lengths),
                "source_id": sources}

    return dataset.map(stage, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def encode_rows(dataset: tf.data.Dataset, encoder: NerEncoder | ClassificationEncoder) -> tf.data.Dataset:
    """Batched records -> one fixed-length row per record (token or text classification)."""
    keys = tuple(encoder.ROW_SHAPES)

    def encode_batch(records):
        encoded = encoder.encode(_records(records))
        return tuple(encoded[k] for k in keys)

    def stage(batch):
        arrays = tf.numpy_function(encode_batch, [batch["record"]], [tf.int32] * len(keys),
                                   stateful=False)
        row = dict(zip(keys, arrays))
        for key, value in row.items():
            value.set_shape([None, encoder.seq_len] if encoder.ROW_SHAPES[key] == "seq" else [None])
        row["source_id"] = tf.where(row["attention_mask"] > 0, batch["source_id"][:, None], -1)
        return row

    return dataset.map(stage, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
