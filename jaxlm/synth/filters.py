"""Checks on one candidate at a time: each returns the name of the filter it fails, or None.

The checks that compare a candidate with the records already kept (near duplicates,
novelty) are in `novelty.py`; these ones need nothing but the candidate, so they run
where it was generated (a Ray worker, or the local process).
"""

from __future__ import annotations

import math
import re

import sacrebleu
from rouge_score import rouge_scorer

from jaxlm.synth.config import FilterConfig
from jaxlm.synth.gopher import repetition_problem, symbol_problem
from jaxlm.text.words import content_words, normalize, words

# Self-Instruct's list of what a text-only model cannot do (Wang et al. 2023, section 2.3),
# plus browsing and attachments.
UNSUITABLE_WORDS = frozenset("""
image images graph graphs picture pictures photo photos file files map maps draw drawing plot
video videos audio music flowchart diagram screenshot attached attachment browse website url
link download upload
""".split())  # noqa: SIM905  a word list reads better as text
UNSUITABLE_PHRASES = ("go to", "click on", "look up online", "search the web", "search online")

_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|as an ai\b|as a helpful ai|as an? (ai )?language model|"
    r"i (cannot|can't|can not|am unable to|'m unable to|am not able to|won't be able to) "
    r"(help|assist|provide|answer|do that|fulfill|comply|browse|access|see|view|open)|"
    r"i (don't|do not) have (access|the ability|personal|real-time))", re.IGNORECASE)

_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(target: str, prediction: str) -> float:
    return _ROUGE.score(target, prediction)["rougeL"].fmeasure


def perplexity(logprobs: list[float]) -> float | None:
    """exp of the mean negative log-prob the model gave its own tokens (None when there are none)."""
    return round(math.exp(-sum(logprobs) / len(logprobs)), 3) if logprobs else None


def support(answer: str, passage: str) -> float | None:
    """Share of the answer's content words found in the passage: the audit's grounding measure."""
    answer_words = content_words(answer)
    if not answer_words:
        return None
    passage_words = set(words(passage))
    return sum(w in passage_words for w in answer_words) / len(answer_words)


def chrf(hypothesis: str, reference: str) -> float:
    return sacrebleu.sentence_chrf(hypothesis, [reference]).score


def instruction_problem(text: str, finish: str, filters: FilterConfig) -> str | None:
    """Why a proposed instruction (or question) is dropped before it is answered, or None."""
    count = len(text.split())
    checks = (
        ("empty", not text.strip()),
        ("truncated", finish == "length"),
        ("length", not filters.min_instruction_words <= count <= filters.max_instruction_words),
        ("unsuitable", unsuitable(text)),
    )
    return _first(checks, filters)


def unsuitable(text: str) -> bool:
    lowered = " ".join(words(text))
    return bool(UNSUITABLE_WORDS.intersection(lowered.split())) or any(
        f" {p} " in f" {lowered} " for p in UNSUITABLE_PHRASES)


def answer_problem(instruction: str, answer: str, finish: str, scores: dict, filters: FilterConfig,
                   passage: str | None = None) -> str | None:
    """Why an answer is dropped, or None. Fills ``scores`` with what it measured."""
    return _first(_answer_checks(instruction, answer, finish, scores, filters, passage), filters)


def answer_verdicts(instruction: str, answer: str, finish: str, scores: dict,
                    filters: FilterConfig) -> dict[str, bool]:
    """Every enabled answer check -> whether the answer passes it (not only the first failure)."""
    return {name: not (failed() if callable(failed) else failed)
            for name, failed in _answer_checks(instruction, answer, finish, scores, filters, None) if filters.on(name)}


def _answer_checks(instruction: str, answer: str, finish: str, scores: dict, filters: FilterConfig,
                   passage: str | None):
    count = len(answer.split())
    scores["echo_rouge_l"] = round(rouge_l(instruction, answer), 4) if answer.strip() else 0.0
    if passage is not None:
        scores["support"] = support(answer, passage)
    ceiling = filters.max_perplexity
    return (
        ("empty", not answer.strip()),
        ("truncated", finish == "length"),
        ("length", not filters.min_answer_words <= count <= filters.max_answer_words),
        ("refusal", _REFUSAL.search(answer) is not None),
        ("echo", scores["echo_rouge_l"] >= filters.echo_rouge),
        ("repetition", lambda: repetition_problem(answer, filters) is not None),
        ("symbols", lambda: symbol_problem(answer, filters) is not None),
        ("support", passage is not None and (scores["support"] or 0.0) < filters.min_support),
        ("perplexity", ceiling is not None and (scores.get("perplexity") or 0.0) > ceiling),
    )


def round_trip_problem(original: str, pivot: str, back: str, finishes: list[str], scores: dict,
                       filters: FilterConfig) -> str | None:
    """Why a back-translation is dropped, or None. Fills ``scores["chrf"]``."""
    scores["chrf"] = round(chrf(back, original), 2) if back.strip() else 0.0
    count = len(back.split())
    checks = (
        ("empty", not pivot.strip() or not back.strip()),
        ("truncated", "length" in finishes),
        ("length", not filters.min_instruction_words <= count <= filters.max_instruction_words),
        ("refusal", _REFUSAL.search(pivot) is not None or _REFUSAL.search(back) is not None),
        ("repetition", lambda: repetition_problem(back, filters) is not None),
        ("symbols", lambda: symbol_problem(back, filters) is not None),
        ("chrf", scores["chrf"] < filters.min_chrf),
        ("unchanged", normalize(back) == normalize(original)),
    )
    return _first(checks, filters)


def _first(checks, filters: FilterConfig) -> str | None:
    """The first enabled check that fails; a callable check is only evaluated when reached."""
    for name, failed in checks:
        if filters.on(name) and (failed() if callable(failed) else failed):
            return name
    return None
