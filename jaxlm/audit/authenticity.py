"""Authenticity without a model: copying from real text, and grounding in a passage.

* Reference copying: a synthetic record that reproduces a long span (n-gram,
  default 13 words) of a ``--reference`` corpus was copied, not generated.
* Grounding: a record that carries the ``passage`` it was generated from should
  answer from it; the support of an answer is the share of its content words
  found in the passage. (Perplexity under a model is in `perplexity.py`.)
"""

from __future__ import annotations

from jaxlm.audit.flags import Flags
from jaxlm.audit.items import AuditItem
from jaxlm.text.ngrams import NgramIndex
from jaxlm.text.words import content_words, words

UNSUPPORTED_BELOW = 0.5  # support share under which a grounded answer is flagged


class AuthenticityMeter:
    name = "authenticity"

    def __init__(self, reference_index: NgramIndex | None, reference_files: list[str]):
        self.index, self.reference_files = reference_index, reference_files
        self.records = 0
        self.copying_records = 0
        self.copied_share_sum = 0.0
        self.grounded = 0
        self.support_sum = 0.0

    def observe(self, item: AuditItem, flags: Flags) -> None:
        self.records += 1
        if self.index is not None:
            self._check_copying(item, flags)
        if item.passage is not None and item.answer is not None:
            self._check_grounding(item, flags)

    def _check_copying(self, item: AuditItem, flags: Flags) -> None:
        tokens = item.words
        if len(tokens) < self.index.n:  # "long span" copying needs a long text
            return
        share, owners = self.index.matches(tokens)
        self.copied_share_sum += share
        if share > 0:
            self.copying_records += 1
            sources = [{"reference_file": name, "reference_index": position}
                       for name, position in owners[:5]]
            flags.add(item.index, "reference_copy", {"ngram_share": round(share, 3),
                                                     "sources": sources}, severity=share)

    def _check_grounding(self, item: AuditItem, flags: Flags) -> None:
        answer = content_words(item.answer)
        if not answer:
            return
        passage = set(words(item.passage))
        support = sum(w in passage for w in answer) / len(answer)
        self.grounded += 1
        self.support_sum += support
        if support < UNSUPPORTED_BELOW:
            missing = sorted({w for w in answer if w not in passage})[:10]
            flags.add(item.index, "unsupported_answer", {"support": round(support, 3),
                                                         "missing_words": missing},
                      severity=1.0 - support)

    def merge(self, other: AuthenticityMeter, flags: Flags) -> None:
        """Add a later shard's sums (see `sharded.py`)."""
        self.records += other.records
        self.copying_records += other.copying_records
        self.copied_share_sum += other.copied_share_sum
        self.grounded += other.grounded
        self.support_sum += other.support_sum

    def __getstate__(self):  # a shard ships its sums; the driver has the index
        return {**vars(self), "index": None}

    def finish(self, flags: Flags) -> dict:
        copying = None
        if self.index is not None:
            copying = {
                "reference_files": self.reference_files,
                "ngram": self.index.n,
                "records_copying": self.copying_records,
                "copying_fraction": self.copying_records / max(self.records, 1),
                "mean_copied_ngram_share": self.copied_share_sum / max(self.records, 1),
            }
        grounding = {
            "grounded_records": self.grounded,
            "mean_support": self.support_sum / self.grounded if self.grounded else None,
            "unsupported_records": flags.counts["unsupported_answer"],
            "unsupported_threshold": UNSUPPORTED_BELOW,
        }
        return {"authenticity": {"reference_copying": copying, "grounding": grounding}}
