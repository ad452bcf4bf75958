"""Consistency of form: self-repetition, length distribution, encoding, self-BLEU.

* Repetition: per record, the share of its word n-grams (n = 2, 3, 4) that
  repeat an earlier n-gram of the same record; degenerate generations loop.
* Self-BLEU (Zhu et al., 2018): BLEU of each text of a random sample against
  the rest of the sample, with `sacrebleu`. High = the records read alike.
* Lengths in words, and encoding problems (see `text.encoding_problems`).
Contradicting answers are in `contradictions.py`; distinct-n in `diversity.py`.
"""

from __future__ import annotations

from array import array
from collections import Counter

import numpy as np
import sacrebleu
from sacrebleu.metrics.helpers import extract_all_word_ngrams

from jaxlm.audit.flags import Flags
from jaxlm.audit.items import AuditItem
from jaxlm.audit.reservoir import Reservoir
from jaxlm.text.ngrams import repeated_fraction
from jaxlm.text.words import encoding_problems

REPETITION_NS = (2, 3, 4)
FLAG_REPETITION_N = 3
FLAG_REPETITION_ABOVE = 0.5  # half the trigrams repeat: a loop, not a refrain or an echoed question
MIN_NGRAMS_FOR_REPETITION = 8  # a handful of words cannot be "repetitive"
SELF_BLEU_WORDS = 100  # the opening of a text is enough, and bounds the n-gram table


class ConsistencyMeter:
    name = "consistency"

    def __init__(self, self_bleu_sample: int = 200, seed: int = 0):
        self.records = 0
        self.lengths = array("I")  # words per record: 4 bytes each, for the distribution
        self.repetition_sums = Counter()
        self.encoding_counts = Counter()
        self.sample = Reservoir(self_bleu_sample, seed)  # for self-BLEU

    def observe(self, item: AuditItem, flags: Flags) -> None:
        self.records += 1
        tokens = item.words
        self.lengths.append(len(tokens))
        for n in REPETITION_NS:
            fraction = repeated_fraction(tokens, n)
            self.repetition_sums[n] += fraction
            if (n == FLAG_REPETITION_N and fraction > FLAG_REPETITION_ABOVE
                    and len(tokens) - n + 1 >= MIN_NGRAMS_FOR_REPETITION):
                flags.add(item.index, "repetition", {f"repeated_{n}gram_fraction": round(fraction, 3)},
                          severity=fraction)
        problems = encoding_problems(item.text)
        if problems:
            self.encoding_counts.update(problems)
            flags.add(item.index, "encoding", problems, severity=len(problems))
        self.sample.offer(" ".join(item.text.split()[:SELF_BLEU_WORDS]), item.index)

    def merge(self, other: ConsistencyMeter, flags: Flags) -> None:
        """Add a later shard's state (see `sharded.py`)."""
        self.records += other.records
        self.lengths.extend(other.lengths)
        self.repetition_sums.update(other.repetition_sums)
        self.encoding_counts.update(other.encoding_counts)
        self.sample.merge(other.sample)

    def finish(self, flags: Flags) -> dict:
        records = max(self.records, 1)
        lengths = np.asarray(self.lengths, dtype=np.int64)
        return {"consistency": {
            "repeated_ngram_fraction": {str(n): self.repetition_sums[n] / records for n in REPETITION_NS},
            "repetitive_records": flags.counts["repetition"],
            "repetition_threshold": FLAG_REPETITION_ABOVE,
            "self_bleu": self_bleu(self.sample.items()),
            "self_bleu_sample": len(self.sample),
            "length_words": distribution(lengths),
            "empty_records": int((lengths == 0).sum()),
            "encoding_problems": dict(sorted(self.encoding_counts.items())),
            "encoding_records": flags.counts["encoding"],
        }}


def self_bleu(texts: list[str]) -> float | None:
    """Mean sentence BLEU (0-100) of each text against all the others as references.

    Equal to averaging ``sacrebleu``'s ``sentence_score(text, others)`` (13a tokens,
    exp smoothing, effective order), but each text's n-grams are extracted once:
    for every n-gram the two largest counts and the owner of the largest are kept,
    which is all a leave-one-out maximum needs. Linear instead of quadratic.
    """
    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        return None
    bleu = sacrebleu.metrics.BLEU(effective_order=True)
    order = bleu.max_ngram_order
    extracted = [extract_all_word_ngrams(bleu.tokenizer(t.rstrip()), 1, order) for t in texts]
    best: dict[tuple, list] = {}  # n-gram -> [largest count, its owner, second largest count]
    for owner, (ngrams, _) in enumerate(extracted):
        for ngram, count in ngrams.items():
            top = best.setdefault(ngram, [0, -1, 0])
            if count > top[0]:
                top[:] = [count, owner, top[0]]
            elif count > top[2]:
                top[2] = count
    lengths = [length for _, length in extracted]
    scores = []
    for i, (ngrams, hyp_len) in enumerate(extracted):
        correct, total = [0] * order, [0] * order
        for ngram, count in ngrams.items():
            top = best[ngram]
            reference_count = top[2] if top[1] == i else top[0]
            total[len(ngram) - 1] += count
            correct[len(ngram) - 1] += min(count, reference_count)
        others = lengths[:i] + lengths[i + 1:]
        ref_len = min(others, key=lambda length: (abs(hyp_len - length), length))  # sacrebleu's rule
        scores.append(sacrebleu.metrics.BLEU.compute_bleu(
            correct, total, hyp_len, ref_len, smooth_method=bleu.smooth_method,
            effective_order=True, max_ngram_order=order).score)
    return float(np.mean(scores))


def distribution(values: np.ndarray, bins: int = 30, log_bins: bool = False) -> dict:
    """Mean, percentiles and a histogram of ``values`` (all None when empty)."""
    if values.size == 0:
        return {"mean": None, "min": None, "p50": None, "p90": None, "p99": None, "max": None,
                "histogram": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    if log_bins and values.min() > 0 and values.max() > values.min():
        bins = np.geomspace(values.min(), values.max(), bins + 1)
    counts, edges = np.histogram(values, bins=bins)
    return {"mean": float(values.mean()), "min": float(values.min()), "p50": float(p50),
            "p90": float(p90), "p99": float(p99), "max": float(values.max()),
            "histogram": {"edges": [float(e) for e in edges], "counts": counts.tolist()}}
