"""Packing documents into rows with segment ids and per-document positions."""

import numpy as np
import tensorflow as tf

from jaxlm.data import packing

PAD = 0


def documents(*token_lists, trained=None):
    def gen():
        for i, ids in enumerate(token_lists):
            flags = trained[i] if trained else [1] * len(ids)
            yield {"ids": np.array(ids, np.int32), "trained": np.array(flags, np.int32),
                   "source_id": np.int32(i % 2)}
    return tf.data.Dataset.from_generator(gen, output_signature={
        "ids": tf.TensorSpec([None], tf.int32), "trained": tf.TensorSpec([None], tf.int32),
        "source_id": tf.TensorSpec([], tf.int32)})


def rows(dataset):
    return list(dataset.as_numpy_iterator())


def test_documents_share_a_row_until_the_next_does_not_fit():
    out = rows(packing.pack(documents([1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11, 12]), seq_len=6, pad_id=PAD))
    assert len(out) == 2
    np.testing.assert_array_equal(out[0]["input_ids"], [1, 2, 4, 5, 6, PAD])
    np.testing.assert_array_equal(out[0]["targets"], [2, 3, 5, 6, 7, 0])
    np.testing.assert_array_equal(out[0]["segment_ids"], [1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(out[0]["positions"], [0, 1, 0, 1, 2, 0])
    np.testing.assert_array_equal(out[0]["source_id"], [0, 0, 1, 1, 1, -1])
    np.testing.assert_array_equal(out[1]["input_ids"], [8, 9, 10, 11, PAD, PAD])


def test_no_position_predicts_the_next_documents_first_token():
    (row,) = rows(packing.pack(documents([1, 2], [3, 4]), seq_len=4, pad_id=PAD))
    # Position 0 predicts 2, position 1 predicts 4: never 3, the next document's start.
    np.testing.assert_array_equal(row["targets"][:2], [2, 4])
    assert 3 not in row["targets"]


def test_loss_mask_follows_trained_flags_and_is_zero_on_padding():
    (row,) = rows(packing.pack(documents([1, 2, 3], trained=[[0, 0, 1]]), seq_len=4, pad_id=PAD))
    np.testing.assert_array_equal(row["loss_mask"], [0.0, 1.0, 0.0, 0.0])
    assert row["loss_mask"].dtype == np.float32


def test_a_full_length_document_fills_a_row_exactly():
    out = rows(packing.pack(documents(list(range(1, 6)), [7, 8]), seq_len=4, pad_id=PAD))
    np.testing.assert_array_equal(out[0]["segment_ids"], [1, 1, 1, 1])
    np.testing.assert_array_equal(out[1]["input_ids"], [7, PAD, PAD, PAD])


def test_without_packing_each_document_gets_its_own_row():
    out = rows(packing.pad_each(documents([1, 2], [3, 4, 5]), seq_len=4, pad_id=PAD))
    assert [int(r["segment_ids"].sum()) for r in out] == [1, 2]
