"""Checks against everything kept so far: ROUGE-L novelty and MinHash near duplicates.

Both indexes only grow with kept records (and, for self-instruct, the seed tasks), so a
run that resumes rebuilds them exactly from ``data.jsonl``.

* Novelty (Self-Instruct): a new instruction whose ROUGE-L F1 (``rouge-score``) with any
  kept instruction reaches the threshold is not new. ROUGE-L's F1 is at most
  2 * (shared tokens) / (sum of lengths), so most pairs are ruled out by counting shared
  tokens, and ``rouge-score`` runs only on the few that could reach it.
* Near duplicates: MinHash over word 5-grams of the whole record, candidates from
  ``datasketch.MinHashLSH``, confirmed when the estimated Jaccard reaches the threshold.
  datasketch's default SHA-1 hash keeps signatures equal across processes and runs.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from datasketch import MinHash, MinHashLSH
from rouge_score import rouge_scorer, tokenizers

from jaxlm.text.words import words

SHINGLE_WORDS = 5
NUM_PERM = 128


class _CachedTokenizer(tokenizers.Tokenizer):
    """rouge-score's default tokenizer, remembering the pool's tokens so they are split once."""

    def __init__(self):
        self._default = tokenizers.DefaultTokenizer(use_stemmer=False)
        self.cache: dict[str, list[str]] = {}

    def tokenize(self, text):
        tokens = self.cache.get(text)
        return tokens if tokens is not None else self._default.tokenize(text)


class NoveltyIndex:
    """Instructions kept so far; how close is a new one to the closest of them?"""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._tokenizer = _CachedTokenizer()
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=self._tokenizer)
        self._texts: list[str] = []
        self._counts: list[Counter] = []

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str) -> None:
        tokens = self._tokenizer._default.tokenize(text)
        self._tokenizer.cache[text] = tokens
        self._texts.append(text)
        self._counts.append(Counter(tokens))

    def closest(self, text: str) -> float:
        """The highest ROUGE-L F1 of ``text`` with a kept instruction that could reach the threshold
        (0.0 when none can; exact whenever the result is at or above the threshold)."""
        tokens = self._tokenizer._default.tokenize(text)
        if not tokens:
            return 0.0
        counts, best = Counter(tokens), 0.0
        for kept, kept_counts in zip(self._texts, self._counts, strict=False):
            size = sum(kept_counts.values())
            shared = sum((counts & kept_counts).values())
            if 2 * shared / (len(tokens) + size) < max(self.threshold, best) or size == 0:
                continue
            best = max(best, self._scorer.score(kept, text)["rougeL"].fmeasure)
            if best >= self.threshold:  # one is enough to reject it
                break
        return best


class NearDuplicateIndex:
    """MinHash LSH over word 5-gram shingles of the kept records."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        # Candidates are confirmed below, so the banding leans towards recall, as the audit's does.
        self._lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=(0.1, 0.9))
        self._template = MinHash(num_perm=NUM_PERM)  # the permutations, drawn once
        self._signatures: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._signatures)

    def signature(self, text: str) -> MinHash | None:
        tokens = words(text)
        if not tokens:
            return None
        n = min(SHINGLE_WORDS, len(tokens))
        shingles = {" ".join(tokens[i:i + n]).encode("utf-8") for i in range(len(tokens) - n + 1)}
        signature = MinHash(num_perm=NUM_PERM, permutations=self._template.permutations,
                            scheme=self._template.scheme)
        signature.update_batch(sorted(shingles))
        return signature

    def closest(self, signature: MinHash | None) -> float:
        """The highest estimated Jaccard with a kept record among the LSH candidates."""
        if signature is None:
            return 0.0
        return max((float(np.mean(self._signatures[key] == signature.hashvalues))
                    for key in self._lsh.query(signature)), default=0.0)

    def add(self, signature: MinHash | None) -> None:
        if signature is None:
            return
        key = len(self._signatures)
        self._signatures[key] = signature.hashvalues.copy()
        self._lsh.insert(key, signature, check_duplication=False)


class Pool:
    """What a new candidate is compared with: kept instructions and kept records."""

    def __init__(self, novelty_rouge: float, near_duplicate_jaccard: float):
        self.novelty = NoveltyIndex(novelty_rouge)
        self.near = NearDuplicateIndex(near_duplicate_jaccard)

    def add(self, instruction: str, text: str) -> None:
        self.novelty.add(instruction)
        self.near.add(self.near.signature(text))
