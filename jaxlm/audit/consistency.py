"""Consistency of form: self-repetition, length distribution, encoding, self-BLEU.

* Repetition: per record, the share of its word n-grams (n = 2, 3, 4) that
  repeat an earlier n-gram of the same record; degenerate generations loop.
* Self-BLEU (Zhu et al., 2018): BLEU of each text of a random sample against
  the rest of the sample, with `sacrebleu`. High = the records read alike.
* Lengths in words, and encoding problems (see `text.encoding_problems`).
Contradicting answers are in `contradictions.py`; distinct-n in `diversity.py`.
"""

from __future__ import annotations

import random
from array import array
from collections import Counter

import numpy as np
import sacrebleu

from jaxlm.audit.flags import Flags
from jaxlm.audit.items import AuditItem
from jaxlm.audit.text import encoding_problems, words
from jaxlm.audit.ngrams import repeated_fraction

REPETITION_NS = (2, 3, 4)
FLAG_REPETITION_N = 3
FLAG_REPETITION_ABOVE = 0.3  # a third of the record's trigrams are repeats
MIN_NGRAMS_FOR_REPETITION = 8  # a handful of words cannot be "repetitive"
SELF_BLEU_WORDS = 200  # self-BLEU is quadratic in the sample; the opening of a text is enough


class ConsistencyMeter:
    name = "consistency"

    def __init__(self, self_bleu_sample: int = 100, seed: int = 0):
        self.records = 0
        self.lengths = array("I")  # words per record: 4 bytes each, for the distribution
        self.repetition_sums = Counter()
        self.encoding_counts = Counter()
        self.sample_size = self_bleu_sample
        self.sample: list[str] = []  # reservoir sample (Algorithm R) for self-BLEU
        self._rng = random.Random(seed)

    def observe(self, item: AuditItem, flags: Flags) -> None:
        self.records += 1
        tokens = words(item.text)
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
        self._sample(item.text)

    def _sample(self, text: str) -> None:
        text = " ".join(text.split()[:SELF_BLEU_WORDS])
        if len(self.sample) < self.sample_size:
            self.sample.append(text)
            return
        slot = self._rng.randrange(self.records)
        if slot < self.sample_size:
            self.sample[slot] = text

    def finish(self, flags: Flags) -> dict:
        records = max(self.records, 1)
        lengths = np.asarray(self.lengths, dtype=np.int64)
        return {"consistency": {
            "repeated_ngram_fraction": {str(n): self.repetition_sums[n] / records for n in REPETITION_NS},
            "repetitive_records": flags.counts["repetition"],
            "repetition_threshold": FLAG_REPETITION_ABOVE,
            "self_bleu": self_bleu(self.sample),
            "self_bleu_sample": len(self.sample),
            "length_words": distribution(lengths),
            "empty_records": int((lengths == 0).sum()),
            "encoding_problems": dict(sorted(self.encoding_counts.items())),
            "encoding_records": flags.counts["encoding"],
        }}


def self_bleu(texts: list[str]) -> float | None:
    """Mean sentence BLEU (0-100) of each text against all the others."""
    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        return None
    bleu = sacrebleu.metrics.BLEU(effective_order=True)
    scores = [bleu.sentence_score(text, texts[:i] + texts[i + 1:]).score
              for i, text in enumerate(texts)]
    return float(np.mean(scores))


def distribution(values: np.ndarray, bins: int = 30) -> dict:
    """Mean, percentiles and a histogram of ``values`` (all None when empty)."""
    if values.size == 0:
        return {"mean": None, "min": None, "p50": None, "p90": None, "p99": None, "max": None,
                "histogram": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    counts, edges = np.histogram(values, bins=bins)
    return {"mean": float(values.mean()), "min": float(values.min()), "p50": float(p50),
            "p90": float(p90), "p99": float(p99), "max": float(values.max()),
            "histogram": {"edges": [float(e) for e in edges], "counts": counts.tolist()}}
