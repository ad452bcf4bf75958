"""Label-preserving augmentation for NER (BIO-tagged) sentences.

A sentence is cut into *segments*: an entity mention (``B-X I-X ...``) or a
single ``O`` token. Every op works on whole segments and tags are re-derived
from (type, length) afterwards, so the output is always valid BIO:

* mention replacement: a mention becomes another mention of the same type seen
  in the training data ("Paris" -> "New York" keeps ``B-geo-loc I-geo-loc``);
* token ops: swap two segments, delete an ``O`` token, or replace an ``O``
  word by a synonym (when a synonym source is available).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from jaxlm.data.augment import STOPWORDS
from jaxlm.data.synonyms import SynonymSource


@dataclasses.dataclass
class Segment:
    tokens: list[str]
    entity: str | None  # None for an O token

    def tags(self) -> list[str]:
        if self.entity is None:
            return ["O"] * len(self.tokens)
        return [f"B-{self.entity}"] + [f"I-{self.entity}"] * (len(self.tokens) - 1)


def segments(tokens: list[str], tags: list[str]) -> list[Segment]:
    """Cuts a sentence into mentions and O tokens; a stray I-X opens a mention."""
    result: list[Segment] = []
    for token, tag in zip(tokens, tags, strict=False):
        prefix, _, entity = tag.partition("-")
        if prefix == "I" and result and result[-1].entity == entity:
            result[-1].tokens.append(token)
        elif prefix in ("B", "I"):
            result.append(Segment([token], entity))
        else:
            result.append(Segment([token], None))
    return result


def join(parts: list[Segment]) -> tuple[list[str], list[str]]:
    tokens = [t for s in parts for t in s.tokens]
    tags = [t for s in parts for t in s.tags()]
    return tokens, tags


class MentionPool:
    """Entity mentions by type, collected from training sentences."""

    def __init__(self):
        self.by_type: dict[str, list[tuple[str, ...]]] = {}
        self._seen: set[tuple[str, tuple[str, ...]]] = set()

    def add(self, tokens: list[str], tags: list[str]) -> None:
        for segment in segments(tokens, tags):
            key = (segment.entity, tuple(segment.tokens))
            if segment.entity is not None and key not in self._seen:
                self._seen.add(key)
                self.by_type.setdefault(segment.entity, []).append(key[1])

    @classmethod
    def from_sentences(cls, sentences: Iterable[tuple[list[str], list[str]]]) -> MentionPool:
        pool = cls()
        for tokens, tags in sentences:
            pool.add(tokens, tags)
        return pool


def replace_mentions(parts: list[Segment], rng: np.random.Generator, strength: float,
                     pool: MentionPool) -> list[Segment]:
    """Replaces one mention for sure, every other one with probability ``strength``."""
    replaceable = [i for i, s in enumerate(parts) if s.entity and pool.by_type.get(s.entity)]
    if not replaceable:
        return parts
    chosen = {replaceable[rng.integers(len(replaceable))]}
    chosen |= {i for i in replaceable if rng.random() < strength}
    out = list(parts)
    for i in sorted(chosen):
        candidates = pool.by_type[parts[i].entity]
        out[i] = Segment(list(candidates[rng.integers(len(candidates))]), parts[i].entity)
    return out


def token_ops(parts: list[Segment], rng: np.random.Generator, strength: float,
              synonyms: SynonymSource | None) -> list[Segment]:
    parts = list(parts)
    edits = max(1, int(round(strength * len(parts))))
    for _ in range(edits):
        op = rng.integers(3)
        if op == 0 and len(parts) >= 2:
            i, j = rng.choice(len(parts), size=2, replace=False)
            parts[i], parts[j] = parts[j], parts[i]
        elif op == 1:
            outside = [i for i, s in enumerate(parts) if s.entity is None]
            if outside and len(parts) > 1:
                del parts[outside[rng.integers(len(outside))]]
        elif synonyms is not None:
            words = [i for i, s in enumerate(parts) if s.entity is None and s.tokens[0].isalpha()
                     and s.tokens[0].lower() not in STOPWORDS and synonyms.synonyms(s.tokens[0])]
            if words:
                i = words[rng.integers(len(words))]
                options = synonyms.synonyms(parts[i].tokens[0])
                parts[i] = Segment([options[rng.integers(len(options))]], None)
    return parts


class NerAugmenter:
    """Applies the NER ops of an AugmentConfig to (tokens, tags) pairs."""

    def __init__(self, config, pool: MentionPool, synonyms: SynonymSource | None = None):
        self.config, self.pool, self.synonyms = config, pool, synonyms

    def augment(self, tokens: list[str], tags: list[str], rng: np.random.Generator):
        c = self.config
        parts = segments(tokens, tags)
        if rng.random() < c.ner_mention_replacement_p:
            parts = replace_mentions(parts, rng, c.ner_strength, self.pool)
        if rng.random() < c.ner_token_ops_p:
            parts = token_ops(parts, rng, c.ner_strength, self.synonyms)
        return join(parts)
