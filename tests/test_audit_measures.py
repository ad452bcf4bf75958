"""Building blocks of the audit measures, checked against their definitions."""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import sacrebleu

from jaxlm.audit.consistency import self_bleu
from jaxlm.audit.labels import bio_errors
from jaxlm.audit.lexicons import Lexicon
from jaxlm.text.ngrams import NgramIndex, repeated_fraction
from jaxlm.text.words import encoding_problems, words


def test_self_bleu_equals_mean_sacrebleu_sentence_bleu_against_the_others():
    rng = random.Random(1)
    vocabulary = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choices(vocabulary, k=rng.randint(2, 25))) + ("!" if i % 3 else "") for i in range(40)]
    texts.append(texts[0])  # an exact copy: its best reference is itself
    bleu = sacrebleu.metrics.BLEU(effective_order=True)
    expected = np.mean([bleu.sentence_score(t, texts[:i] + texts[i + 1:]).score for i, t in enumerate(texts)])
    assert self_bleu(texts) == pytest.approx(expected, abs=1e-9)


def test_bio_errors_are_i_tags_that_continue_nothing():
    assert bio_errors(["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]) == []
    assert bio_errors(["I-PER", "O", "I-LOC", "B-PER", "I-LOC"]) == [0, 2, 4]


def test_lexicon_prefers_the_longest_term_and_does_not_overlap():
    lexicon = Lexicon({"not good": -2, "good": 3, "black people": "group"})
    found = lexicon.find(words("Not good, black people are good"))
    assert [(m.term, m.value) for m in found] == [("not good", -2), ("black people", "group"), ("good", 3)]


def test_ngram_index_matches_long_spans_and_whole_short_documents():
    index = NgramIndex(n=8)
    index.add("w1 w2 w3 w4 w5 w6 w7 w8 w9 w10".split(), ("eval", 0))  # noqa: SIM905  a sentence reads better than its list of words
    index.add("alpha beta gamma delta epsilon zeta".split(), ("eval", 1))  # noqa: SIM905  6 words: matched whole
    index.add("how are you today".split(), ("eval", 2))  # noqa: SIM905  under 6 words: a common phrase
    assert index.matches("x w2 w3 w4 w5 w6 w7 w8 w9 y".split())[1] == [("eval", 0)]  # noqa: SIM905  a sentence reads better than its list of words
    assert index.matches("x w2 w3 w4 w5 w6 w7 w8 y".split())[1] == []  # noqa: SIM905  a sentence reads better than its list of words
    assert index.matches("x alpha beta gamma delta epsilon zeta y".split())[1] == [("eval", 1)]  # noqa: SIM905  a sentence reads better than its list of words
    assert index.matches("how are you today".split())[1] == []  # noqa: SIM905  a sentence reads better than its list of words


def test_repeated_fraction_counts_repeats_of_earlier_ngrams():
    assert repeated_fraction("a b c a b c".split(), 3) == pytest.approx(1 / 4)  # noqa: SIM905  a sentence reads better than its list of words
    assert repeated_fraction("a b".split(), 3) == 0.0  # noqa: SIM905  a sentence reads better than its list of words


@pytest.mark.parametrize("text, problem", [("caf\ufffd", "replacement_char"), ("CafÃ©", "mojibake"),
                                           ("bell\x07", "control_char"), ("x\ud800y", "lone_surrogate")])
def test_encoding_problems_are_named(text, problem):
    assert encoding_problems(text) == [problem]
    assert encoding_problems("Café, naïve — “quotes”\tand\nnewlines") == []


def test_the_sketches_hash_text_alike_in_every_process():
    # MinHash and HyperLogLog hash through hash32: with Python's salted hash a near-duplicate close to the
    # threshold was flagged in some runs and not in others
    code = "from jaxlm.text.ngrams import hash32; print(hash32('kalo miru tesovi'), hash32(('kalo', 'miru')))"
    outputs = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                              capture_output=True, text=True, check=True).stdout for seed in ("1", "2")}
    assert len(outputs) == 1, outputs
