"""Packing documents into fixed-length rows, as tf.data stages (no Python).

Input elements: ``{"ids": int32[L], "trained": int32[L], "source_id": int32[]}``
with 2 <= L <= seq_len + 1. A document of L tokens gives L - 1 positions:
``input_ids = ids[:-1]``, ``targets = ids[1:]``, ``loss_mask = trained[1:]``.

Output rows (all [seq_len]): ``input_ids``, ``targets``, ``loss_mask``
(float32), ``segment_ids`` (1, 2, ... per document, 0 = padding),
``positions`` (restarting at 0 per document) and ``source_id`` (-1 = padding).
Because targets are computed per document, no position ever predicts the
first token of the next document.

:func:`pack` is greedy *next-fit*: a running row takes documents until the
next one does not fit, then is emitted. It is a ``tf.data.Dataset.scan`` over
the stream, so it is deterministic, streams, and adds no Python to the input
pipeline. With short chat documents it fills rows about as well as first-fit.
"""

from __future__ import annotations

import tensorflow as tf

ROW_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions", "source_id")


def _padding(seq_len: int, pad_id: int) -> dict[str, tf.Tensor]:
    return {
        "input_ids": tf.fill([seq_len], tf.constant(pad_id, tf.int32)),
        "targets": tf.zeros([seq_len], tf.int32),
        "loss_mask": tf.zeros([seq_len], tf.float32),
        "segment_ids": tf.zeros([seq_len], tf.int32),
        "positions": tf.zeros([seq_len], tf.int32),
        "source_id": tf.fill([seq_len], tf.constant(-1, tf.int32)),
    }


def _document_columns(document: dict, segment: tf.Tensor) -> dict[str, tf.Tensor]:
    ids = document["ids"]
    length = tf.shape(ids)[0] - 1
    return {
        "input_ids": ids[:-1],
        "targets": ids[1:],
        "loss_mask": tf.cast(document["trained"][1:], tf.float32),
        "segment_ids": tf.fill([length], segment),
        "positions": tf.range(length, dtype=tf.int32),
        "source_id": tf.fill([length], document["source_id"]),
    }


def _write(row: dict, columns: dict, at: tf.Tensor) -> dict:
    length = tf.shape(columns["input_ids"])[0]
    index = (at + tf.range(length))[:, None]
    return {k: tf.tensor_scatter_nd_update(row[k], index, columns[k]) for k in ROW_KEYS}


def pad_each(dataset: tf.data.Dataset, seq_len: int, pad_id: int) -> tf.data.Dataset:
    """One document per row (``pack=False``)."""

    def to_row(document):
        return _write(_padding(seq_len, pad_id), _document_columns(document, tf.constant(1)), 0)

    return dataset.map(to_row, num_parallel_calls=tf.data.AUTOTUNE)


def pack(dataset: tf.data.Dataset, seq_len: int, pad_id: int) -> tf.data.Dataset:
    """Next-fit packing into rows of ``seq_len``; flushes the last row of a finite stream."""
    empty = _padding(seq_len, pad_id)
    # An end marker (a zero-length document) flushes the final, partly filled row.
    with_end = dataset.map(lambda d: {**d, "end": False}).concatenate(
        tf.data.Dataset.from_tensors({"ids": tf.zeros([1], tf.int32), "trained": tf.zeros([1], tf.int32),
                                      "source_id": tf.constant(-1, tf.int32), "end": True}))
    initial = (empty, tf.constant(0), tf.constant(0))  # row, filled length, segments in row

    def step(state, document):
        row, filled, segments = state
        length = tf.shape(document["ids"])[0] - 1
        start_new_row = document["end"] | (filled + length > seq_len)
        emit = start_new_row & (filled > 0)
        base = {k: tf.where(start_new_row, empty[k], row[k]) for k in ROW_KEYS}
        filled = tf.where(start_new_row, 0, filled)
        segments = tf.where(start_new_row, 0, segments) + 1
        columns = _document_columns(document, segments)
        new_row = _write(base, columns, filled)
        return (new_row, filled + length, segments), (row, emit)

    return (with_end.scan(initial, step)
            .filter(lambda row, emit: emit)
            .map(lambda row, emit: row))
