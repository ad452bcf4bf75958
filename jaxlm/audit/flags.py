"""Per-record flags: which records a measure singled out, why, and how badly.

Measures call :meth:`Flags.add` while they stream; the writer later turns the
flags into ``flagged.jsonl`` and decides what ``clean.jsonl`` drops. Only
flagged records are kept here, so memory follows the number of problems, not
the size of the file.
"""

from __future__ import annotations

import heapq
from collections import Counter

# Every reason a record can be flagged with, and what it means (shown in --help).
REASONS = {
    "duplicate": "same text (after case/space normalisation) as an earlier record",
    "near_duplicate": "MinHash Jaccard >= threshold with an earlier record",
    "contamination": "shares an n-gram span with an --eval record",
    "reference_copy": "copies a long span (n-gram) of a --reference corpus",
    "unsupported_answer": "a grounded record whose answer is mostly absent from its passage",
    "high_perplexity": "perplexity far above the rest of the file under the reference model",
    "repetition": "the record repeats its own n-grams",
    "encoding": "replacement characters, mojibake, control characters",
    "contradiction": "same prompt as other records with a materially different answer",
    "label_conflict": "same input as another record with a different label",
    "invalid_bio": "an I- tag that does not continue a B-/I- tag of the same type",
    "toxicity": "contains a term of the profanity/slur lexicon",
    "bias_term": "a demographic term in a clearly negative context",
}

# Removed from clean.jsonl unless --remove says otherwise: the problems that are
# unambiguous. Lexicon and model screens (toxicity, bias, perplexity) only flag.
DEFAULT_REMOVE = ("duplicate", "near_duplicate", "contamination", "encoding", "invalid_bio",
                  "label_conflict")

EXAMPLES_PER_REASON = 5


class Flags:
    """Flags per record index, plus the worst few records of each reason."""

    def __init__(self, examples_per_reason: int = EXAMPLES_PER_REASON):
        self.by_index: dict[int, dict[str, object]] = {}
        self.counts: Counter[str] = Counter()
        self._worst: dict[str, list[tuple[float, int]]] = {}
        self._keep = examples_per_reason

    def add(self, index: int, reason: str, detail: object = None, severity: float = 0.0) -> None:
        """Flag record ``index``; ``severity`` ranks it among the examples shown in the report."""
        if reason not in REASONS:
            raise ValueError(f"unknown flag reason {reason!r}")
        reasons = self.by_index.setdefault(index, {})
        if reason not in reasons:
            self.counts[reason] += 1
        reasons[reason] = detail
        self._remember(reason, (severity, -index))  # ties: earlier records first

    def _remember(self, reason: str, entry: tuple[float, int]) -> None:
        worst = self._worst.setdefault(reason, [])
        if len(worst) < self._keep:
            heapq.heappush(worst, entry)
        elif entry > worst[0]:
            heapq.heapreplace(worst, entry)

    def merge(self, other: Flags) -> None:
        """Add the flags of a later shard (see `sharded.py`): the same as having added them here."""
        for index, reasons in other.by_index.items():
            mine = self.by_index.setdefault(index, {})
            self.counts.update(reason for reason in reasons if reason not in mine)
            mine.update(reasons)
        for reason, entries in other._worst.items():
            for entry in entries:
                self._remember(reason, entry)

    def reasons_of(self, index: int) -> dict[str, object]:
        return self.by_index.get(index, {})

    def worst(self, reason: str) -> list[int]:
        """Indices of the most severe records flagged with ``reason``, worst first."""
        return [-negated for _, negated in sorted(self._worst.get(reason, []), reverse=True)]

    def example_indices(self) -> set[int]:
        return {index for reason in self._worst for index in self.worst(reason)}

    def __len__(self) -> int:
        return len(self.by_index)
