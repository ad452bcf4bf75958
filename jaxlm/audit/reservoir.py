"""A fixed-size uniform sample of a stream that shards can build apart and merge (bottom-k sampling).

Each item gets a pseudo-random priority fixed by (seed, its index in the stream), and the
sample is the ``size`` items with the smallest priorities: a uniform sample without
replacement. The sample of a whole stream is the bottom ``size`` of its shards' samples,
so a sharded audit (``--engine ray``) picks exactly the items a single pass picks.
"""

from __future__ import annotations

import hashlib
import heapq


def priority(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest(), "big")


class Reservoir:
    """Holds at most ``size`` items; seeded; ``items()`` lists them in stream order."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed, self.seen = size, seed, 0
        self._heap: list[tuple[int, int, object]] = []  # (-priority, index, item): the largest on top

    def offer(self, item, index: int) -> None:
        self.seen += 1
        if self.size > 0:
            self._push((-priority(self.seed, index), index, item))

    def _push(self, entry) -> None:
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, entry)
        elif entry[0] > self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)

    def merge(self, other: Reservoir) -> None:
        self.seen += other.seen
        for entry in other._heap:
            self._push(entry)

    def items(self) -> list:
        return [item for _, _, item in sorted(self._heap, key=lambda entry: entry[1])]

    def __len__(self) -> int:
        return len(self._heap)
