"""Exact and near-duplicate records, found in one streaming pass.

Exact: the same text after case/whitespace normalisation. Near: MinHash over
word 5-gram shingles, candidates from `datasketch.MinHashLSH`, kept when the
estimated Jaccard similarity reaches the threshold. Each record is compared
with the records before it, so the first of a group stays unflagged and
removing the flagged ones keeps one copy.

Memory per record: one hash for the exact check, the MinHash signature
(``num_perm`` x 4 bytes) and the LSH buckets (about 4 KB at 128 permutations).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from datasketch import MinHash, MinHashLSH

from jaxlm.audit.flags import Flags
from jaxlm.audit.items import AuditItem
from jaxlm.text.ngrams import hash32
from jaxlm.text.words import normalize

_SIGNATURE_CHUNK = 4096  # signatures are stored in blocks to grow without copying


class DuplicationMeter:
    name = "duplication"

    def __init__(self, threshold: float = 0.8, shingle_words: int = 5, num_perm: int = 128):
        self.threshold, self.shingle_words, self.num_perm = threshold, shingle_words, num_perm
        # Candidates are verified below, so false positives only cost time: weight the band
        # choice towards recall (pairs at the threshold are found ~87% of the time, not ~40%).
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9), hashfunc=hash)
        self._template = MinHash(num_perm=num_perm, hashfunc=hash32)  # permutations drawn once
        self._first_with_text: dict[int, int] = {}
        self._exact_group_size: Counter[int] = Counter()  # first index -> copies incl. itself
        self._near_parent: dict[int, int] = {}  # union-find over near-duplicate pairs
        self._signature_blocks: list[np.ndarray] = []
        self._signature_row: dict[int, int] = {}
        self.records = 0
        self.sketches: list | None = None  # a shard of a sharded audit only sketches; see `sharded.py`

    def observe(self, item: AuditItem, flags: Flags) -> None:
        self.records += 1
        key = hash(normalize(item.text))
        if self.sketches is not None:  # the driver compares the sketches of all shards, in order
            seen = key in self._first_with_text
            self._first_with_text.setdefault(key, item.index)
            signature = None if seen else self._signature(item.words)  # an exact copy needs none
            self.sketches.append((item.index, key, None if signature is None else signature.hashvalues))
            return
        self._compare(item.index, key, lambda: self._signature(item.words), flags)

    def _compare(self, index: int, key: int, signature, flags: Flags) -> None:
        """Flag record ``index`` against the records before it; ``signature()`` makes its MinHash."""
        first = self._first_with_text.setdefault(key, index)
        if first != index:
            self._exact_group_size[first] += 1
            flags.add(index, "duplicate", {"of": first})
            return
        signature = signature()
        if signature is None:
            return
        match, similarity = self._best_earlier_match(signature)
        if match is not None:
            self._union(index, match)
            flags.add(index, "near_duplicate", {"of": match, "jaccard": round(similarity, 3)},
                      severity=similarity)
        self._store(index, signature)

    def merge(self, other: DuplicationMeter, flags: Flags) -> None:
        """Compare a later shard's sketches with everything before them, as one pass would."""
        self.records += other.records
        for index, key, hashvalues in other.sketches:
            self._compare(index, key, lambda hashvalues=hashvalues: None if hashvalues is None else MinHash(
                num_perm=self.num_perm, hashvalues=hashvalues, scheme=self._template.scheme), flags)

    def __getstate__(self):  # a shard ships its sketches, not its (empty) LSH index
        return {**vars(self), "_lsh": None, "_template": None, "_first_with_text": {}}

    def _signature(self, tokens: list[str]) -> MinHash | None:
        if not tokens:
            return None
        n = min(self.shingle_words, len(tokens))
        shingles = {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}
        signature = MinHash(num_perm=self.num_perm, permutations=self._template.permutations,
                            scheme=self._template.scheme, hashfunc=hash32)
        signature.update_batch(list(shingles))
        return signature

    def _best_earlier_match(self, signature: MinHash) -> tuple[int | None, float]:
        best, best_similarity = None, 0.0
        for candidate in self._lsh.query(signature):
            # LSH only proposes candidates; the signature estimate decides.
            similarity = float(np.mean(self._stored(candidate) == signature.hashvalues))
            if similarity >= self.threshold and similarity > best_similarity:
                best, best_similarity = candidate, similarity
        return best, best_similarity

    def _store(self, index: int, signature: MinHash) -> None:
        row = len(self._signature_row)
        if row % _SIGNATURE_CHUNK == 0:
            self._signature_blocks.append(np.empty((_SIGNATURE_CHUNK, self.num_perm), np.uint32))
        self._signature_blocks[-1][row % _SIGNATURE_CHUNK] = signature.hashvalues
        self._signature_row[index] = row
        self._lsh.insert(index, signature, check_duplication=False)

    def _stored(self, index: int) -> np.ndarray:
        row = self._signature_row[index]
        return self._signature_blocks[row // _SIGNATURE_CHUNK][row % _SIGNATURE_CHUNK]

    def _root(self, index: int) -> int:
        while self._near_parent.get(index, index) != index:
            index = self._near_parent[index]
        return index

    def _union(self, a: int, b: int) -> None:
        self._near_parent[self._root(a)] = self._root(b)

    def finish(self, flags: Flags) -> dict:
        exact_sizes = [size + 1 for size in self._exact_group_size.values()]
        near_clusters = Counter(self._root(i) for i in self._near_parent)
        for root in list(near_clusters):
            if root not in self._near_parent:  # the root itself was never a child
                near_clusters[root] += 1
        near_sizes = list(near_clusters.values())
        records = max(self.records, 1)
        return {"duplication": {
            "records": self.records,
            "exact_duplicates": flags.counts["duplicate"],
            "exact_fraction": flags.counts["duplicate"] / records,
            "exact_clusters": _cluster_summary(exact_sizes),
            "near_duplicates": flags.counts["near_duplicate"],
            "near_fraction": flags.counts["near_duplicate"] / records,
            "near_clusters": _cluster_summary(near_sizes),
            "any_fraction": (flags.counts["duplicate"] + flags.counts["near_duplicate"]) / records,
            "threshold": self.threshold,
            "shingle_words": self.shingle_words,
            "num_perm": self.num_perm,
        }}


def _cluster_summary(sizes: list[int]) -> dict:
    """Number of groups, largest, and how many groups have each size."""
    histogram = Counter(sizes)
    return {
        "count": len(sizes),
        "largest": max(sizes, default=0),
        "size_histogram": {str(size): histogram[size] for size in sorted(histogram)},
    }
