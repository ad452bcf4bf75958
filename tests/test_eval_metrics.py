"""Each score of jaxlm.eval.metrics agrees with its library computed directly; the rest on worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu
import seqeval.metrics
import sklearn.metrics
from rouge_score import rouge_scorer

from jaxlm.eval import metrics, prompts

PREDICTIONS = ["The cat sat on the mat.", "hello there", "Paris is the capital of France", "I don't know"]
REFERENCES = ["A cat was sitting on the mat.", "Hello there", "The capital of France is Paris.", "no idea at all"]


def test_generation_scores_are_rouge_score_and_sacrebleu():
    scores = metrics.generation_scores(PREDICTIONS, REFERENCES)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDICTIONS, REFERENCES, strict=False)])
    assert scores["rouge_l"] == pytest.approx(rouge)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score)
    assert scores["exact_match"] == 0.25  # only "hello there", equal up to case
    assert scores["examples"] == 4


def test_exact_match_ignores_case_and_spacing_only():
    assert metrics.exact_match("  Hello   World ", "hello world")
    assert not metrics.exact_match("hello world.", "hello world")


def test_classification_scores_are_scikit_learns():
    names = ["negative", "neutral", "positive"]
    true = [0, 0, 1, 2, 2, 2, 1, 0]
    pred = [0, 1, 1, 2, 0, 2, 2, 0]
    scores = metrics.classification_scores(true, pred, names)
    assert scores["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(true, pred))
    assert scores["macro_f1"] == pytest.approx(sklearn.metrics.f1_score(true, pred, average="macro"))
    assert scores["confusion_matrix"] == sklearn.metrics.confusion_matrix(true, pred).tolist()
    expected = sklearn.metrics.classification_report(true, pred, target_names=names, output_dict=True)
    for name in names:
        assert scores["report"][name]["f1-score"] == pytest.approx(expected[name]["f1-score"])
    assert scores["report_text"] == sklearn.metrics.classification_report(true, pred, target_names=names, digits=3)


def test_a_prediction_naming_no_class_is_wrong_and_gets_its_own_column():
    scores = metrics.classification_scores(["yes", "no", "yes"], ["yes", "(no label)", "no"], ["no", "yes"])
    assert scores["accuracy"] == pytest.approx(1 / 3)
    assert scores["matrix_labels"] == ["no", "yes", "(no label)"]
    assert scores["confusion_matrix"] == [[0, 0, 1], [1, 1, 0], [0, 0, 0]]


def test_ner_scores_are_seqevals_and_the_tag_report_is_scikit_learns():
    true = [["B-person", "O", "B-loc", "I-loc"], ["O", "B-person"]]
    pred = [["B-person", "O", "B-loc", "O"], ["O", "B-person"]]
    scores = metrics.ner_scores(true, pred)
    assert scores["f1"] == pytest.approx(seqeval.metrics.f1_score(true, pred))
    assert scores["precision"] == pytest.approx(seqeval.metrics.precision_score(true, pred))
    assert scores["recall"] == pytest.approx(seqeval.metrics.recall_score(true, pred))
    assert scores["entity_report"] == seqeval.metrics.classification_report(true, pred, digits=3, zero_division=0)
    flat_true, flat_pred = sum(true, []), sum(pred, [])
    assert scores["tag_accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(flat_true, flat_pred))
    assert scores["tag_report"] == sklearn.metrics.classification_report(
        flat_true, flat_pred, labels=sorted(set(flat_true)), digits=3, zero_division=0)


def test_token_scores_give_perplexity_as_the_exponential_of_the_mean_loss():
    scores = metrics.token_scores(loss_sum=23.0, count=10, correct=4)
    assert scores == {"loss": 2.3, "perplexity": pytest.approx(math.exp(2.3)), "token_accuracy": 0.4, "tokens": 10}


def test_degeneration_flags_the_looping_answer_and_the_token_limit():
    loop = "I am a man who is a man who is a man who is a man who is a man who is"
    answers = ["Why did the penguin cross the road? To get to the other slide.", loop]
    scores = metrics.degeneration_scores(answers, ["stop", "length"])
    words = loop.lower().split()
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    assert scores["repeat_4"] == pytest.approx((0 + 1 - len(set(grams)) / len(grams)) / 2)
    assert scores["looping"] == 0.5 and scores["hit_token_limit"] == 0.5


def test_distinct_n_counts_distinct_ngrams_across_answers():
    texts = [["a", "b", "a"], ["a", "b"]]
    assert metrics.distinct_n(texts, 1) == pytest.approx(2 / 5)
    assert metrics.distinct_n(texts, 2) == pytest.approx(2 / 3)  # (a,b), (b,a), (a,b)
    assert metrics.distinct_n([[]], 2) == 0.0


def test_confusion_matrix_png_is_written(tmp_path):
    path = metrics.plot_confusion_matrix([[3, 1], [0, 2]], ["no", "yes"], str(tmp_path / "cm.png"), title="t")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_label_named_first_in_an_answer_is_the_prediction():
    names = ["negative", "neutral", "positive"]
    assert prompts.parse_label("Positive.", names) == "positive"
    assert prompts.parse_label("It is neutral, not negative", names) == "neutral"
    assert prompts.parse_label("nonnegative", names) is None  # whole words only


def test_few_shot_examples_are_fixed_by_the_seed_and_come_before_the_question():
    pool = [{"messages": [{"role": "user", "content": f"q{i}"}], "reference": f"a{i}"} for i in range(10)]
    shots = prompts.draw_shots(pool, 3, seed=7)
    assert shots == prompts.draw_shots(pool, 3, seed=7) != prompts.draw_shots(pool, 3, seed=8)
    chat = prompts.with_shots([{"role": "system", "content": "be brief"}, {"role": "user", "content": "Q"}], shots)
    assert [m["role"] for m in chat] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert chat[-1]["content"] == "Q" and chat[2]["content"] == shots[0]["reference"]
    with pytest.raises(ValueError, match="only 10"):
        prompts.draw_shots(pool, 11, seed=0)
