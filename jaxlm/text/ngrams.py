"""Word n-grams: hashing, an index of n-grams of other corpora, self-repetition.

N-grams are held as Python hashes of word tuples: 8 bytes of identity per
n-gram instead of the words, which keeps an index of an eval or reference
corpus small. Hashes are only compared within one process, so Python's
per-process hash seed does not matter.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

# A record shorter than this many words is matched whole instead of by n-grams:
# shorter spans ("how are you") are common phrases, not evidence of copying.
MIN_SPAN_WORDS = 6


def hash32(value: str | bytes | tuple[str, ...]) -> int:
    """A 32-bit hash for datasketch's sketches (the audit's MinHash and HyperLogLog): CRC-32 of the UTF-8 text
    (a tuple's words joined by a unit separator), the same in every process and run. Python's own hash is 1.5x
    faster but salted per process, so a near-duplicate close to the threshold was flagged in some runs and not
    in others (tests/test_audit_planted.py); datasketch's default, SHA-1, is 3.4x slower than CRC-32."""
    if isinstance(value, tuple):
        value = "\x1f".join(value)
    return zlib.crc32(value.encode("utf-8") if isinstance(value, str) else value)


def ngram_hashes(tokens: Sequence[str], n: int) -> list[int]:
    """Hash of every contiguous ``n``-word span of ``tokens`` (empty when shorter)."""
    return [hash(tuple(tokens[i:i + n])) for i in range(len(tokens) - n + 1)]


def repeated_fraction(tokens: Sequence[str], n: int) -> float:
    """Share of the ``n``-grams of a text that repeat an earlier n-gram of the same text."""
    grams = ngram_hashes(tokens, n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


class NgramIndex:
    """The n-grams of a set of documents, to find which documents a text overlaps.

    A document of at least ``n`` words contributes its ``n``-grams; a shorter one
    (of at least :data:`MIN_SPAN_WORDS`) contributes itself as one span, so short
    eval items (questions, chat turns) are still caught when copied whole.
    """

    def __init__(self, n: int):
        self.n = n
        self._owner: dict[int, tuple[str, int]] = {}  # n-gram hash -> (corpus name, doc index)
        self._lengths: set[int] = set()  # span lengths present, n and shorter
        self.documents = 0
        self.vocabulary: set[str] = set()

    def add(self, tokens: Sequence[str], owner: tuple[str, int]) -> None:
        self.documents += 1
        self.vocabulary.update(tokens)
        if len(tokens) >= self.n:
            length = self.n
        elif len(tokens) >= MIN_SPAN_WORDS:
            length = len(tokens)
        else:
            return
        self._lengths.add(length)
        for gram in ngram_hashes(tokens, length):
            self._owner.setdefault(gram, owner)

    def matches(self, tokens: Sequence[str]) -> tuple[float, list[tuple[str, int]]]:
        """(share of the text's n-grams found in the index, owners of the matched spans)."""
        owners: dict[tuple[str, int], None] = {}
        matched = total = 0
        for length in sorted(self._lengths):
            grams = ngram_hashes(tokens, length)
            hits = [self._owner[g] for g in grams if g in self._owner]
            owners.update(dict.fromkeys(hits))
            if length == self.n:
                matched, total = len(hits), len(grams)
        if total == 0:  # text shorter than n: any whole-span hit counts fully
            return (1.0 if owners else 0.0), list(owners)
        return matched / total, list(owners)

    def __len__(self) -> int:
        return len(self._owner)

