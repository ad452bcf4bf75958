"""The scores `jaxlm eval` and the trainer report, each a thin wrapper over the field's library.

Pure functions over plain Python values (label lists, strings, counts): the trainer, the
evaluation command and the tests call the same ones, so a score means the same everywhere.

* language modelling: loss, perplexity, next-token accuracy from summed counts;
* generated answers against references: ROUGE-L (rouge-score), BLEU and chrF (sacrebleu), exact match;
* token classification: seqeval's entity report, and scikit-learn's per-tag report on word tags;
* classification: accuracy, macro-F1, per-class report and confusion matrix (scikit-learn);
* degeneration of free answers: repeated n-grams, answers cut at the token limit, distinct-n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from jaxlm.text.ngrams import repeated_fraction
from jaxlm.text.words import normalize, words

# An answer whose 4-grams repeat this much is looping ("a man who is a man who is ..."): seq-rep-4,
# Welleck et al. 2019, "Neural text generation with unlikelihood training".
REPEAT_N = 4
LOOPING = 0.5


def token_scores(loss_sum: float, count: float, correct: float) -> dict:
    """Mean loss over the tokens that count, its perplexity, and the share predicted right (argmax)."""
    count = max(float(count), 1.0)
    loss = float(loss_sum) / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "token_accuracy": float(correct) / count,
            "tokens": int(count)}


# --- generated answers --------------------------------------------------------------------


def exact_match(prediction: str, reference: str) -> bool:
    """Equal after Unicode normalisation, case folding and whitespace collapsing."""
    return normalize(prediction) == normalize(reference)


def generation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Corpus scores of answers against one reference each: ROUGE-L F1 (mean, stemmed), BLEU and chrF
    (sacrebleu corpus scores, 0-100), exact match (share)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {}
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=False)]
    return {"rouge_l": sum(rouge) / len(rouge),
            "bleu": sacrebleu.corpus_bleu(list(predictions), [list(references)]).score,
            "chrf": sacrebleu.corpus_chrf(list(predictions), [list(references)]).score,
            "exact_match": sum(map(exact_match, predictions, references)) / len(predictions),
            "examples": len(predictions)}


def degeneration_scores(answers: Sequence[str], finish_reasons: Sequence[str]) -> dict:
    """How answers go wrong when a model breaks: repetition and running to the token limit.

    `repeat_4`: mean share of an answer's word 4-grams that repeat an earlier one (seq-rep-4);
    `looping`: share of answers with repeat_4 >= 0.5; `hit_token_limit`: share stopped by the limit
    rather than an end-of-turn token; `distinct_1`/`distinct_2`: distinct word uni/bigrams over all
    of them, across answers (Li et al. 2016)."""
    if len(answers) != len(finish_reasons):
        raise ValueError(f"{len(answers)} answers for {len(finish_reasons)} finish reasons")
    if not answers:
        return {}
    tokens = [words(a) for a in answers]
    repeats = [repeated_fraction(t, REPEAT_N) for t in tokens]
    return {"repeat_4": sum(repeats) / len(repeats),
            "looping": sum(r >= LOOPING for r in repeats) / len(repeats),
            "hit_token_limit": sum(r == "length" for r in finish_reasons) / len(finish_reasons),
            "distinct_1": distinct_n(tokens, 1), "distinct_2": distinct_n(tokens, 2),
            "mean_words": sum(map(len, tokens)) / len(tokens)}


def distinct_n(texts: Sequence[Sequence[str]], n: int) -> float:
    """Distinct n-grams over all n-grams of the word lists `texts` (0 when there are none)."""
    grams = [tuple(t[i:i + n]) for t in texts for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


# --- labels -------------------------------------------------------------------------------


def ner_scores(true_tags: list[list[str]], predicted_tags: list[list[str]]) -> dict:
    """Entity-level precision/recall/F1 (seqeval, strict BIO spans) with seqeval's report, and a
    word-level per-tag report (scikit-learn) as the fine-tuning tutorials print both."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from sklearn.metrics import accuracy_score
    from sklearn.metrics import classification_report as tag_report

    flat_true = [t for sentence in true_tags for t in sentence]
    flat_pred = [t for sentence in predicted_tags for t in sentence]
    tags = sorted(set(flat_true) | set(flat_pred))
    return {"precision": precision_score(true_tags, predicted_tags, zero_division=0),
            "recall": recall_score(true_tags, predicted_tags, zero_division=0),
            "f1": f1_score(true_tags, predicted_tags, zero_division=0),
            "tag_accuracy": accuracy_score(flat_true, flat_pred) if flat_true else 0.0,
            "entity_report": classification_report(true_tags, predicted_tags, digits=3, zero_division=0),
            "tag_report": tag_report(flat_true, flat_pred, labels=tags, digits=3, zero_division=0)
            if flat_true else ""}


def classification_scores(true_labels: Sequence, predicted_labels: Sequence, label_names: Sequence[str]) -> dict:
    """Accuracy, macro-F1, the per-class report (text and dict) and the confusion matrix.

    Labels are indices into `label_names` or the names themselves. A prediction outside the names
    (a generated answer that names no label, say) counts as wrong and gets its own matrix column."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    names = [str(n) for n in label_names]
    y_true, y_pred = _as_names(true_labels, names), _as_names(predicted_labels, names)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels for {len(y_pred)} predictions")
    extra = sorted(set(y_pred) - set(names))
    unknown = sorted(set(y_true) - set(names))
    if unknown:
        raise ValueError(f"true labels {unknown} are not among the label names {names}")
    matrix_labels = names + extra
    report = dict(labels=names, target_names=names, zero_division=0)
    return {"accuracy": accuracy_score(y_true, y_pred) if y_true else 0.0,
            "macro_f1": f1_score(y_true, y_pred, labels=names, average="macro", zero_division=0),
            "report": classification_report(y_true, y_pred, output_dict=True, **report),
            "report_text": classification_report(y_true, y_pred, digits=3, **report),
            "confusion_matrix": confusion_matrix(y_true, y_pred, labels=matrix_labels).tolist(),
            "matrix_labels": matrix_labels, "examples": len(y_true)}


def _as_names(labels: Sequence, names: list[str]) -> list[str]:
    return [names[int(x)] if not isinstance(x, str) and 0 <= int(x) < len(names) else str(x) for x in labels]


def plot_confusion_matrix(matrix: list[list[int]], labels: Sequence[str], path: str, title: str = "") -> str:
    """The matrix as a PNG (rows: true label, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    size = 1.0 + 0.7 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(labels)).plot(ax=ax, colorbar=False,
                                                                                   xticks_rotation=45)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
