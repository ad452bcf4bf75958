"""Augmentation: EDA and noise ops are seeded, configurable, and touch inputs only."""

import difflib
import os

import numpy as np
import pytest

from jaxlm.data import augment
from jaxlm.data.augment import Augmenter
from jaxlm.data.config import AugmentConfig
from jaxlm.data.synonyms import MYTHES_DAT, WORDNET_DIR, MythesSynonyms, WordNetSynonyms, load_synonyms

TEXT = "The happy child quickly found a large red ball\nin the beautiful garden near the old house."
HAVE_WORDNET = os.path.exists(os.path.join(WORDNET_DIR, "index.noun"))
HAVE_MYTHES = os.path.exists(MYTHES_DAT)
needs_synonyms = pytest.mark.skipif(not (HAVE_WORDNET or HAVE_MYTHES),
                                    reason="neither wordnet-base nor mythes-en-us is installed")


def rng(seed=0):
    return np.random.default_rng(seed)


class FixedSynonyms:
    """A stand-in thesaurus so word-op tests do not depend on Debian packages."""

    def synonyms(self, word):
        return {"happy": ["glad"], "quickly": ["rapidly"], "large": ["big"]}.get(word.lower(), [])


@pytest.mark.skipif(not HAVE_WORDNET, reason="wordnet-base not installed")
def test_wordnet_gives_synonyms_from_shared_synsets():
    assert "automobile" in WordNetSynonyms().synonyms("car")


@pytest.mark.skipif(not HAVE_MYTHES, reason="mythes-en-us not installed")
def test_mythes_gives_synonyms_but_not_antonyms():
    synonyms = MythesSynonyms().synonyms("quickly")
    assert "rapidly" in synonyms and "slowly" not in synonyms


@needs_synonyms
def test_synonym_replacement_with_the_installed_thesaurus_changes_content_words():
    out = augment.synonym_replacement(TEXT, rng(), 0.3, load_synonyms())
    assert out != TEXT and len(out.split()) >= len(TEXT.split())


def test_synonym_replacement_keeps_case_punctuation_and_layout():
    out = augment.synonym_replacement("Happy, quickly.\nLarge!", rng(), 1.0, FixedSynonyms())
    assert out == "Glad, rapidly.\nBig!"


def test_random_insertion_adds_synonyms():
    out = augment.random_insertion("happy child", rng(), 0.5, FixedSynonyms())
    assert out.split().count("glad") == 1 and len(out.split()) == 3


def test_random_swap_permutes_words():
    out = augment.random_swap(TEXT, rng(), 0.3)
    assert out != TEXT and sorted(out.split()) == sorted(TEXT.split())


def test_random_deletion_removes_words_but_never_all():
    assert len(augment.random_deletion(TEXT, rng(), 0.3).split()) < len(TEXT.split())
    assert augment.random_deletion("alone", rng(), 1.0) == "alone"
    assert len(augment.random_deletion("two words", rng(), 1.0).split()) == 1


def test_char_typos_edit_a_few_letters():
    out = augment.char_typos(TEXT, rng(), 0.1)
    assert out != TEXT
    assert difflib.SequenceMatcher(None, out, TEXT).ratio() > 0.85


def test_casing_and_whitespace_noise_keep_the_letters():
    assert augment.casing(TEXT, rng(), 0.5).lower() == TEXT.lower() != augment.casing(TEXT, rng(), 0.5)
    spaced = augment.whitespace(TEXT, rng(), 0.5)
    assert spaced != TEXT and spaced.replace(" ", "") == TEXT.replace(" ", "")


def test_all_ops_are_off_by_default():
    augmenter = Augmenter(AugmentConfig())
    assert not AugmentConfig().any_enabled()
    assert augmenter.augment_text(TEXT, rng()) == TEXT


def test_same_seed_and_example_give_the_same_augmentation():
    augmenter = Augmenter(AugmentConfig(random_swap_p=1.0, char_typo_p=1.0, seed=3))
    first = augmenter.augment_text(TEXT, augmenter.rng_for(source_id=0, index=5))
    assert first == augmenter.augment_text(TEXT, augmenter.rng_for(source_id=0, index=5))
    assert first != augmenter.augment_text(TEXT, augmenter.rng_for(source_id=0, index=6))


def test_probability_controls_how_often_an_op_fires():
    augmenter = Augmenter(AugmentConfig(random_swap_p=0.3, eda_strength=0.5))
    changed = [augmenter.augment_text(TEXT, rng(i)) != TEXT for i in range(400)]
    assert np.mean(changed) == pytest.approx(0.3, abs=0.07)


def test_only_inputs_are_augmented_never_targets():
    augmenter = Augmenter(AugmentConfig(random_swap_p=1.0, eda_strength=0.5))
    pair = augmenter.augment_record("prompt_completion", {"prompt": TEXT, "completion": TEXT}, rng())
    assert pair["prompt"] != TEXT and pair["completion"] == TEXT
    chat = augmenter.augment_record("messages", {"messages": [
        {"role": "user", "content": TEXT}, {"role": "assistant", "content": TEXT}]}, rng())
    assert chat["messages"][0]["content"] != TEXT and chat["messages"][1]["content"] == TEXT
