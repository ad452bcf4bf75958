"""A fixed-size uniform sample of a stream (reservoir sampling, Vitter's Algorithm R)."""

from __future__ import annotations

import random


class Reservoir(list):
    """Holds at most `size` items, each seen item kept with equal probability; seeded."""

    def __init__(self, size: int, seed: int = 0):
        super().__init__()
        self.size, self.seen = size, 0
        self._rng = random.Random(seed)

    def offer(self, item) -> None:
        self.seen += 1
        if len(self) < self.size:
            self.append(item)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.size:
            self[slot] = item
