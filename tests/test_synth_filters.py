"""The synthesis filters, one table per check, against hand-computed values and the reference libraries."""

import random

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from jaxlm.synth.config import FilterConfig, SynthError, set_filter
from jaxlm.synth.filters import answer_problem, instruction_problem, round_trip_problem, support
from jaxlm.synth.gopher import (
    duplicate_ngram_chars,
    parse_ngram_fractions,
    repetition_problem,
    symbol_problem,
    top_ngram_chars,
)
from jaxlm.synth.novelty import NearDuplicateIndex, NoveltyIndex

FILTERS = FilterConfig()


@pytest.mark.parametrize("words, n, top, duplicated", [
    ("a b a b a b", 2, 3 * len("a b"), 2 * len("a b")),  # "a b" x3; repeats at 2 and 4 (a repeat skips n)
    ("a b c d", 2, 0, 0),  # no n-gram occurs twice
    ("x y z x y z x y z", 3, 3 * len("x y z"), 2 * len("x y z")),
    ("one two", 3, 0, 0),  # shorter than n
])
def test_gopher_ngram_character_counts(words, n, top, duplicated):
    assert top_ngram_chars(words.split(), n) == top
    assert duplicate_ngram_chars(words.split(), n) == duplicated


@pytest.mark.parametrize("text, settings, rule", [
    ("The capital of France is Paris.", {}, None),
    ("Paris", {}, None),
    ("Buy now.\nBuy now.\nBuy now.\nThe end of the list is here.", {}, "duplicate lines"),
    ("First paragraph here.\n\nSecond paragraph.\n\nFirst paragraph here.", {}, "duplicate paragraphs"),
    ("the cat and the cat and the cat and the cat", {}, "top 2-gram chars"),
    ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
     "one two three four five six seven", {}, "top 3-gram chars"),  # a repeated span trips top-n first
    ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
     "one two three four five six seven", {"top_ngram_char_frac": ""}, "duplicate 5-gram chars"),
])
def test_gopher_repetition_rules(text, settings, rule):
    problem = repetition_problem(text, FilterConfig(**settings))
    assert (problem is None) if rule is None else problem.startswith(rule)


@pytest.mark.parametrize("text, rule", [
    ("A plain sentence with words.", None),
    ("Composite: 91 = 7 x 13.", None),  # digits count like letters (numeric answers are fine)
    ("1. Miso\n2. Pepper\n3. Juno", None),
    ("```python\ndef f(x):\n    return {x: [x] * 2}  # ... ###\n```", None),  # code is not prose
    ("# # # # title ### and ...", "symbol/word ratio"),
    ("- one\n- two\n- three", "bullet lines"),
    ("It went on and on for a very long time through the night...\n"
     "The story kept going for many more years and many more pages...\nThe end.", "ellipsis lines"),
    ("= = = = ok", "words with a letter or digit"),
])
def test_gopher_quality_rules(text, rule):
    problem = symbol_problem(text, FILTERS)
    assert (problem is None) if rule is None else problem.startswith(rule)


def test_ngram_fraction_settings_parse_and_reject_nonsense():
    assert parse_ngram_fractions("2:0.2, 3:0.18") == ((2, 0.2), (3, 0.18))
    with pytest.raises(ValueError):
        parse_ngram_fractions("2=0.2")


@pytest.mark.parametrize("instruction, finish, reason", [
    ("Name three rivers in Europe.", "stop", None),
    ("", "stop", "empty"),
    ("Name three rivers in", "length", "truncated"),
    ("Rivers?", "stop", "length"),
    ("Describe the image below in detail.", "stop", "unsuitable"),
    ("Go to the website and summarize it.", "stop", "unsuitable"),
])
def test_instruction_checks(instruction, finish, reason):
    assert instruction_problem(instruction, finish, FILTERS) == reason


PASSAGE = "The Danube flows through ten countries, more than any other river in the world."


@pytest.mark.parametrize("instruction, answer, finish, passage, settings, reason", [
    ("Name a river.", "The Danube.", "stop", None, {}, None),
    ("Name a river.", "", "stop", None, {}, "empty"),
    ("Name a river.", "The Danube is a long", "length", None, {}, "truncated"),
    ("Name a river.", "word " * 401, "stop", None, {}, "length"),
    ("Name a river.", "I'm sorry, but I cannot help with that.", "stop", None, {}, "refusal"),
    ("Name a river.", "As an AI language model, rivers are not my field.", "stop", None, {}, "refusal"),
    ("Name a river in Europe please.", "Name a river in Europe please.", "stop", None, {}, "echo"),
    ("Name a river.", "Buy now.\nBuy now.\nBuy now.\nOK then.", "stop", None, {}, "repetition"),
    ("Name a river.", "See ### section ... and ## notes", "stop", None, {}, "symbols"),
    ("How many countries?", "Ten countries.", "stop", PASSAGE, {}, None),
    ("How many countries?", "Seven mountains in Asia.", "stop", PASSAGE, {}, "support"),
    ("Name a river.", "The Danube.", "stop", None, {"max_perplexity": 10.0}, "perplexity"),
    ("Name a river in Europe please.", "Name a river in Europe please.", "stop", None,
     {"disabled": ("echo",)}, None),
])
def test_answer_checks(instruction, answer, finish, passage, settings, reason):
    filters = FilterConfig(**settings)
    scores = {"perplexity": 25.0}
    assert answer_problem(instruction, answer, finish, scores, filters, passage=passage) == reason
    assert scores["echo_rouge_l"] == pytest.approx(
        rouge_scorer.RougeScorer(["rougeL"]).score(instruction, answer)["rougeL"].fmeasure, abs=1e-4)


def test_support_is_the_share_of_answer_content_words_in_the_passage():
    assert support("Ten countries", PASSAGE) == 1.0
    assert support("Ten mountains", PASSAGE) == 0.5  # "ten" found, "mountains" not
    assert support("the of a", PASSAGE) is None  # no content words


@pytest.mark.parametrize("original, pivot, back, reason", [
    ("What is the capital of France?", "Quelle est la capitale de la France ?",
     "What's the capital of France?", None),
    ("What is the capital of France?", "Quelle est la capitale ?", "Il fait beau aujourd'hui.", "chrf"),
    ("What is the capital of France?", "Quelle est la capitale ?", "What is the capital of France?",
     "unchanged"),
    ("What is the capital of France?", "", "What's the capital of France?", "empty"),
])
def test_round_trip_checks_score_chrf_with_sacrebleu(original, pivot, back, reason):
    scores = {}
    assert round_trip_problem(original, pivot, back, ["stop", "stop"], scores, FILTERS) == reason
    expected = sacrebleu.sentence_chrf(back, [original]).score if back else 0.0
    assert scores["chrf"] == pytest.approx(expected, abs=0.01)


def test_filter_settings_convert_types_and_name_bad_keys():
    filters = FilterConfig()
    set_filter(filters, "novelty_rouge=0.5")
    set_filter(filters, "max_perplexity=40")
    set_filter(filters, "max_answer_words=50")
    assert (filters.novelty_rouge, filters.max_perplexity, filters.max_answer_words) == (0.5, 40.0, 50)
    with pytest.raises(SynthError, match="novelty_roug"):
        set_filter(filters, "novelty_roug=0.5")
    with pytest.raises(SynthError, match="not a number"):
        set_filter(filters, "novelty_rouge=high")


def test_novelty_matches_brute_force_rouge_score():
    """The pruned search rejects exactly what comparing with every kept instruction rejects."""
    rng = random.Random(0)
    words = "write name list explain the a of river city three five short poem story about".split()  # noqa: SIM905
    pool = [" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(60)]
    queries = [" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(60)] + pool[:5]
    index = NoveltyIndex(0.7)
    for text in pool:
        index.add(text)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for query in queries:
        best = max(scorer.score(kept, query)["rougeL"].fmeasure for kept in pool)
        assert (index.closest(query) >= 0.7) == (best >= 0.7), query
        if best >= 0.7:
            assert index.closest(query) >= 0.7


def test_near_duplicates_are_found_by_minhash_and_unrelated_text_is_not():
    base = " ".join(f"word{i}" for i in range(60))
    near = base.replace("word30", "other")  # Jaccard of 5-gram shingles ~ 0.84
    index = NearDuplicateIndex(0.8)
    index.add(index.signature(base))
    assert index.closest(index.signature(near)) >= 0.8
    assert index.closest(index.signature(" ".join(f"term{i}" for i in range(60)))) == 0.0
