"""Fixed-shape batches for the jitted model passes.

XLA compiles one program per input shape, so batches are always padded to the
same number of rows and their length to a multiple of ``LENGTH_BUCKET``: a
pass over a whole file then compiles only a handful of programs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LENGTH_BUCKET = 64


def padded_batch(token_lists: Sequence[Sequence[int]], rows: int, pad_id: int = 0,
                 bucket: int = LENGTH_BUCKET) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask), both int32 ``[rows, length]``; rows beyond the inputs are all padding."""
    if len(token_lists) > rows:
        raise ValueError(f"{len(token_lists)} sequences do not fit a batch of {rows}")
    longest = max((len(t) for t in token_lists), default=1)
    length = max(bucket, -(-longest // bucket) * bucket)
    ids = np.full((rows, length), pad_id, dtype=np.int32)
    mask = np.zeros((rows, length), dtype=np.int32)
    for row, tokens in enumerate(token_lists):
        ids[row, :len(tokens)] = tokens
        mask[row, :len(tokens)] = 1
    return ids, mask
