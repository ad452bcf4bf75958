"""Diversity and representativeness: vocabulary, distinct-n, sources, topics.

* Vocabulary: distinct words, the share of all tokens the 1,000 commonest
  words cover (high = a narrow vocabulary), words seen once, and with
  ``--reference`` the share of the reference corpus' vocabulary that appears.
* distinct-1 / distinct-2 (Li et al., 2016): distinct uni/bigrams over all
  uni/bigrams. Bigrams are counted with a HyperLogLog sketch (about 1% error)
  so that memory does not grow with the corpus.
* Topics: a random sample of records is embedded (MiniLM sentence embeddings,
  or TF-IDF) and clustered with k-means; cluster sizes and their spread.
* Share per source: the records' ``source`` field.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np
from datasketch import HyperLogLog

from jaxlm.audit.flags import Flags
from jaxlm.audit.items import AuditItem
from jaxlm.audit.reservoir import Reservoir
from jaxlm.text.ngrams import hash32
from jaxlm.text.words import content_words, snippet

TOP_WORDS = 1000
MAX_SOURCES = 1000  # a "source" field with more values than this is an id, not a source


class DiversityMeter:
    name = "diversity"

    def __init__(self, embedder=None, topic_sample: int = 1000, reference_vocabulary=None,
                 seed: int = 0, sample_topics: bool | None = None):
        self.embedder = embedder
        # A shard of a sharded audit samples for topics without an embedder: the driver embeds.
        self.sample_topics = embedder is not None if sample_topics is None else sample_topics
        self.reference_vocabulary = reference_vocabulary
        self.unigrams: Counter[str] = Counter()
        self.bigrams = HyperLogLog(p=14, hashfunc=hash32)
        self.tokens = self.bigram_total = self.records = 0
        self.sources: Counter[str] = Counter()
        self.sample = Reservoir(topic_sample, seed)

    def observe(self, item: AuditItem, flags: Flags) -> None:
        self.records += 1
        tokens = item.words
        self.unigrams.update(tokens)
        self.tokens += len(tokens)
        for bigram in zip(tokens, tokens[1:], strict=False):
            self.bigrams.update(bigram)
        self.bigram_total += max(len(tokens) - 1, 0)
        source = item.source or "(no source field)"
        if len(self.sources) < MAX_SOURCES or source in self.sources:
            self.sources[source] += 1
        if self.sample_topics:
            self.sample.offer(item.text, item.index)

    def merge(self, other: DiversityMeter, flags: Flags) -> None:
        """Add a later shard's state (see `sharded.py`); sources are admitted in stream order."""
        self.unigrams.update(other.unigrams)
        self.bigrams.merge(other.bigrams)
        self.tokens += other.tokens
        self.bigram_total += other.bigram_total
        self.records += other.records
        for source, count in other.sources.items():
            if len(self.sources) < MAX_SOURCES or source in self.sources:
                self.sources[source] += count
        self.sample.merge(other.sample)

    def finish(self, flags: Flags) -> dict:
        vocabulary = len(self.unigrams)
        with warnings.catch_warnings():
            # datasketch warns near its small-range correction; the ~1% error is documented.
            warnings.simplefilter("ignore", UserWarning)
            distinct_bigrams = min(self.bigrams.count(), self.bigram_total)
        return {
            "consistency": {
                "distinct_1": vocabulary / self.tokens if self.tokens else None,
                "distinct_2": distinct_bigrams / self.bigram_total if self.bigram_total else None,
            },
            "diversity": {
                "vocabulary": self._vocabulary_report(),
                "sources": {name: {"records": n, "share": n / max(self.records, 1)}
                            for name, n in self.sources.most_common()},
                "topics": self._topics(),
            },
        }

    def _vocabulary_report(self) -> dict:
        top = sum(n for _, n in self.unigrams.most_common(TOP_WORDS))
        coverage = None
        if self.reference_vocabulary:
            found = sum(w in self.unigrams for w in self.reference_vocabulary)
            coverage = found / len(self.reference_vocabulary)
        return {
            "size": len(self.unigrams),
            "tokens": self.tokens,
            "top_1000_token_share": top / self.tokens if self.tokens else None,
            "hapax_fraction": (sum(1 for n in self.unigrams.values() if n == 1) / len(self.unigrams)
                               if self.unigrams else None),
            "reference_vocabulary_coverage": coverage,
            "most_common": dict(self.unigrams.most_common(20)),
        }

    def _topics(self) -> dict | None:
        if self.embedder is None or len(self.sample) < 4:
            return None
        from sklearn.cluster import KMeans  # imported here: only needed when topics are on

        sample = self.sample.items()
        embeddings = self.embedder.embed(sample)
        k = int(np.clip(round(math.sqrt(len(sample) / 2)), 2, 20))
        kmeans = KMeans(n_clusters=k, n_init=3, random_state=0).fit(embeddings)
        sizes = np.bincount(kmeans.labels_, minlength=k)
        shares = sizes / sizes.sum()
        spread = float(-(shares[shares > 0] * np.log(shares[shares > 0])).sum() / math.log(k))
        clusters = []
        keywords = _cluster_keywords(sample, kmeans.labels_, k)
        for cluster in np.argsort(-sizes):
            members = np.flatnonzero(kmeans.labels_ == cluster)
            if members.size == 0:  # k-means can leave a cluster empty when records repeat
                continue
            distances = np.linalg.norm(embeddings[members] - kmeans.cluster_centers_[cluster], axis=1)
            central = sample[members[np.argmin(distances)]]
            clusters.append({"size": int(sizes[cluster]), "share": float(shares[cluster]),
                             "keywords": keywords[cluster], "example": snippet(central, 160)})
        return {"embedder": self.embedder.name, "sample": len(sample), "clusters": clusters,
                "spread": spread}


def _cluster_keywords(texts: list[str], labels: np.ndarray, k: int, top: int = 5) -> list[list[str]]:
    """Words frequent in a cluster and rare in the others (class-based TF-IDF)."""
    counts = [Counter() for _ in range(k)]
    for text, label in zip(texts, labels, strict=False):
        counts[label].update(content_words(text))
    clusters_with = Counter(w for c in counts for w in c)
    return [[w for w, _ in sorted(c.items(), key=lambda wc: -wc[1] * math.log(1 + k / clusters_with[wc[0]]))[:top]]
            for c in counts]
