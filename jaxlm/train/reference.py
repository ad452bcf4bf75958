"""`dpo.precompute_reference`: the reference model's completion log-probs, computed once before training.

DPO compares the model with where it started. Held as a model, that reference is a frozen copy of every trained
parameter in full fine-tuning (under LoRA it is free: the adapters off). Precomputed, it is two numbers per pair
(the summed log-probs of the chosen and of the rejected completion, as TRL's `precompute_ref_log_probs`), so the
run holds one model.

`ReferenceTable.build` makes one pass over every pair the run will read (the training records once, unshuffled,
then the eval and test batches) through one jitted forward of the starting model (dropout off), a progress bar
counting the pairs. The table is keyed by each pair's token ids, so shuffling, mixing, epochs and a resumed
data position all find their pair; `Engine.put` attaches `reference_logps` [pairs, 2] to every batch.

Resume: nothing is stored. A rerun builds the table again in `prepare`, before the checkpoint is restored, from
model.path (the same starting weights) and the same records: the same program on the same inputs, so the same
numbers (XLA is deterministic for a fixed program and device), and a resumed run continues bitwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

PAIR_FIELDS = ("input_ids", "targets", "completion_mask")  # what the log-probs depend on (attention from ids)


def pair_key(batch: dict, row: int) -> bytes:
    """The identity of one pair of a [pairs, 2, seq] batch: a digest of its tokens and completion mask."""
    digest = hashlib.blake2b(digest_size=16)
    for field in PAIR_FIELDS:
        digest.update(np.ascontiguousarray(batch[field][row], np.int32).tobytes())
    return digest.digest()


class ReferenceTable:
    """Pair key -> the starting model's (chosen, rejected) summed completion log-probs, float32."""

    def __init__(self):
        self.logps: dict[bytes, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.logps)

    def add(self, batch: dict, logps: np.ndarray) -> None:
        for row in range(len(logps)):
            self.logps[pair_key(batch, row)] = logps[row]

    def attach(self, batch: dict) -> dict:
        """`batch` with its pairs' `reference_logps` [pairs, 2] (a pair the table lacks is a bug: KeyError)."""
        if "reference_logps" in batch:
            return batch
        rows = [self.logps[pair_key(batch, row)] for row in range(len(batch["input_ids"]))]
        return {**batch, "reference_logps": np.stack(rows).astype(np.float32)}

    @classmethod
    def build(cls, score, batches: Iterable[dict], *, progress: bool, total: int | None = None) -> ReferenceTable:
        """`score(batch) -> [pairs, 2]` log-probs of each batch of `batches` (the starting model's), in one table."""
        from tqdm.auto import tqdm

        table = cls()
        with tqdm(total=total, desc="reference log-probs", unit=" pairs", disable=not progress) as bar:
            for batch in batches:
                table.add(batch, np.asarray(score(batch)))
                bar.update(len(batch["input_ids"]))
        return table
