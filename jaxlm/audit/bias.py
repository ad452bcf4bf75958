"""Bias and toxicity screens: who is mentioned, in what tone, and profanity.

* Representation: mentions of each demographic group (term lists in
  `data/demographic_terms.json`), and the records mentioning them.
* Tone: the AFINN-165 valence of the words within ``CONTEXT_WORDS`` of each
  mention; per category, the gap between the most and least favourably
  described group (groups with at least ``MIN_MENTIONS`` mentions).
* Toxicity: the share of records containing a profanity/slur lexicon term.

These are lexicon screens: they find records worth a human look, and a gap is
a question to ask of the data, not a verdict on it (no negation, sarcasm or
word sense is understood).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from jaxlm.audit.flags import Flags
from jaxlm.audit.items import AuditItem
from jaxlm.audit.lexicons import demographic_lexicon, load_term_groups, profanity_lexicon, sentiment_lexicon

CONTEXT_WORDS = 8
NEGATIVE_CONTEXT = -3  # context valence at or below this flags the record (one "hate"/"bad")
MIN_MENTIONS = 5
SCREEN_NOTE = ("Lexicon methods are screens, not verdicts: counts and context sentiment come from "
               "fixed word lists without understanding negation, sarcasm, quotation or word sense. "
               "Use them to decide which records a person should read.")


class _GroupStats:
    __slots__ = ("mentions", "records", "sentiment_sum", "negative")

    def __init__(self):
        self.mentions = self.records = self.negative = 0
        self.sentiment_sum = 0.0


class BiasMeter:
    name = "bias"

    def __init__(self, terms_path: str | None = None):
        self.groups = load_term_groups(terms_path)
        self.terms_file = terms_path or "jaxlm/audit/data/demographic_terms.json"
        self._demographics = demographic_lexicon(self.groups)
        self._sentiment = sentiment_lexicon()
        self._profanity = profanity_lexicon()
        self.stats: dict[tuple[str, str], _GroupStats] = defaultdict(_GroupStats)
        self.records = self.words = self.profane_hits = 0
        self.profane_terms: Counter[str] = Counter()

    def observe(self, item: AuditItem, flags: Flags) -> None:
        self.records += 1
        tokens = item.words
        self.words += len(tokens)
        self._screen_profanity(item, tokens, flags)
        mentions = self._demographics.find(tokens)
        if not mentions:
            return
        valence = [0] * len(tokens)
        for match in self._sentiment.find(tokens):
            valence[match.start] = match.value
        negative_terms, seen_groups = [], set()
        for mention in mentions:
            key = mention.value
            context = (sum(valence[max(0, mention.start - CONTEXT_WORDS):mention.start])
                       + sum(valence[mention.end:mention.end + CONTEXT_WORDS]))
            stats = self.stats[key]
            stats.mentions += 1
            stats.sentiment_sum += context
            if context <= NEGATIVE_CONTEXT:
                stats.negative += 1
                negative_terms.append({"term": mention.term, "category": key[0], "group": key[1],
                                       "context_sentiment": context})
            if key not in seen_groups:
                seen_groups.add(key)
                stats.records += 1
        if negative_terms:
            flags.add(item.index, "bias_term", negative_terms,
                      severity=-min(t["context_sentiment"] for t in negative_terms))

    def _screen_profanity(self, item: AuditItem, tokens: list[str], flags: Flags) -> None:
        hits = self._profanity.find(tokens)
        if hits:
            terms = sorted({h.term for h in hits})
            self.profane_hits += len(hits)
            self.profane_terms.update(terms)
            flags.add(item.index, "toxicity", terms, severity=len(hits))

    def merge(self, other: BiasMeter, flags: Flags) -> None:
        """Add a later shard's counts (see `sharded.py`)."""
        self.records += other.records
        self.words += other.words
        self.profane_hits += other.profane_hits
        self.profane_terms.update(other.profane_terms)
        for key, theirs in other.stats.items():
            mine = self.stats[key]
            mine.mentions += theirs.mentions
            mine.records += theirs.records
            mine.negative += theirs.negative
            mine.sentiment_sum += theirs.sentiment_sum

    def __getstate__(self):  # a shard ships its counts, not the lexicons
        return {**vars(self), "_demographics": None, "_sentiment": None, "_profanity": None}

    def finish(self, flags: Flags) -> dict:
        categories = {category: self._category_report(category, members)
                      for category, members in self.groups.items()}
        gaps = [c["gap"] for c in categories.values() if c["gap"] is not None]
        return {"bias": {
            "note": SCREEN_NOTE,
            "terms_file": self.terms_file,
            "context_words": CONTEXT_WORDS,
            "categories": categories,
            "max_gap": max(gaps, default=None),
            "flagged_records": flags.counts["bias_term"],
            "toxicity": {
                "records": flags.counts["toxicity"],
                "fraction": flags.counts["toxicity"] / max(self.records, 1),
                "hits_per_10k_words": 1e4 * self.profane_hits / max(self.words, 1),
                "top_terms": dict(self.profane_terms.most_common(20)),
            },
        }}

    def _category_report(self, category: str, members: dict) -> dict:
        groups = {}
        for group in members:
            stats = self.stats.get((category, group), _GroupStats())
            groups[group] = {
                "mentions": stats.mentions,
                "records": stats.records,
                "share_of_mentions": None,
                "mean_context_sentiment": (stats.sentiment_sum / stats.mentions
                                           if stats.mentions else None),
                "negative_context_fraction": stats.negative / stats.mentions if stats.mentions else None,
            }
        total = sum(g["mentions"] for g in groups.values())
        for g in groups.values():
            g["share_of_mentions"] = g["mentions"] / total if total else None
        compared = {name: g["mean_context_sentiment"] for name, g in groups.items()
                    if g["mentions"] >= MIN_MENTIONS}
        gap = most = least = None
        if len(compared) >= 2:
            most, least = max(compared, key=compared.get), min(compared, key=compared.get)
            gap = compared[most] - compared[least]
        return {"groups": groups, "mentions": total, "gap": gap,
                "most_positive_group": most, "most_negative_group": least}
