"""Deterministic train/validation/test splits with de-duplication.

Used by the TFDS builders so that no text appears in two splits:

1. Exact duplicates (after lower-casing and collapsing whitespace/punctuation)
   are dropped; the first occurrence is kept.
2. Near-duplicates, and texts a builder puts in one group, (MinHash LSH over character 4-grams, Jaccard >= threshold;
   retweets, re-asked questions) are grouped with union-find.
3. A whole group goes to one split, chosen by a hash of the group's smallest
   normalised key, so the split of a text never depends on file order or on
   what else is in the corpus: 80% train, 10% validation, 10% test.
"""

from __future__ import annotations

import hashlib
import re

from datasketch import MinHash, MinHashLSH

SPLIT_FRACTIONS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))
NEAR_DUPLICATE_THRESHOLD = 0.8
_NUM_PERM = 64
_SHINGLE = 4
_MAX_SHINGLED_CHARS = 2000  # long documents: the opening is enough to spot copies


def word_key(text: str) -> str:
    """The comparison form of a text: lower case, words separated by one space."""
    return " ".join(re.findall(r"\w+", text.lower()))


def split_of(key: str) -> str:
    """Split for a normalised key, from a stable hash (not Python's hash())."""
    unit = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    cumulative = 0.0
    for name, fraction in SPLIT_FRACTIONS:
        cumulative += fraction
        if unit < cumulative:
            return name
    return SPLIT_FRACTIONS[-1][0]


def assign_splits(keys: list[str], *, groups: list[str] | None = None,
                  threshold: float = NEAR_DUPLICATE_THRESHOLD) -> list[str | None]:
    """Split name per key, or None for an exact duplicate of an earlier key.

    ``groups`` (optional, one per key): keys sharing a group always share a
    split, e.g. every answer to the same question.
    """
    normalized = [word_key(k) for k in keys]
    first_index: dict[str, int] = {}
    for i, key in enumerate(normalized):
        first_index.setdefault(key, i)
    unique = sorted(first_index.values())

    parent = {i: i for i in unique}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    for i, j in _near_duplicate_pairs([normalized[i] for i in unique], threshold):
        union(unique[i], unique[j])
    if groups is not None:
        first_of_group: dict[str, int] = {}
        for i in unique:
            union(i, first_of_group.setdefault(word_key(groups[i]), i))

    group_key: dict[int, str] = {}
    for i in unique:
        r = root(i)
        group_key[r] = min(group_key.get(r, normalized[i]), normalized[i])
    result: list[str | None] = [None] * len(keys)
    for i in unique:
        result[i] = split_of(group_key[root(i)])
    return result


def _near_duplicate_pairs(texts: list[str], threshold: float) -> list[tuple[int, int]]:
    shingles = [_shingles(t) for t in texts]
    signatures = MinHash.bulk(shingles, num_perm=_NUM_PERM)
    lsh = MinHashLSH(threshold=threshold, num_perm=_NUM_PERM)
    pairs = []
    for i, signature in enumerate(signatures):
        for j in lsh.query(signature):
            # LSH returns candidates; confirm with the estimated Jaccard.
            if signature.jaccard(signatures[j]) >= threshold:
                pairs.append((j, i))
        lsh.insert(i, signature)
    return pairs


def _shingles(text: str) -> list[bytes]:
    text = text[:_MAX_SHINGLED_CHARS]
    if len(text) <= _SHINGLE:
        return [text.encode("utf-8")]
    return list({text[i:i + _SHINGLE].encode("utf-8") for i in range(len(text) - _SHINGLE + 1)})

