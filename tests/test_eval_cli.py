"""`jaxlm eval` end to end on tiny checkpoints, one run per task, checked against transformers and the
metric libraries computed directly on what the run wrote."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import sklearn.metrics
import torch
import transformers
from rouge_score import rouge_scorer

from hf_checkpoints import tiny_bert
from jaxlm.eval.cli import main
from train_helpers import WORDS, bert_tokenizer, write_conll, write_sft_jsonl, write_text, write_tiny_llama

TAGS = ["O", "B-loc", "B-person"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    tagger = str(root / "tagger")
    tiny_bert(tagger, num_labels=len(TAGS))
    with open(os.path.join(tagger, "config.json")) as f:
        config = json.load(f)
    config["id2label"] = {str(i): t for i, t in enumerate(TAGS)}
    config["label2id"] = {t: i for i, t in enumerate(TAGS)}
    with open(os.path.join(tagger, "config.json"), "w") as f:
        json.dump(config, f)
    bert_tokenizer(tagger).save_pretrained(tagger)
    sentiment = root / "sentiment.jsonl"
    with open(sentiment, "w") as f:
        for i in range(16):
            f.write(json.dumps({"text": " ".join(WORDS[i:i + 5]), "label": ["good", "bad"][i % 2]}) + "\n")
    return {"llama": write_tiny_llama(root / "llama"), "tagger": tagger, "sft": write_sft_jsonl(root / "chat.jsonl"),
            "text": write_text(root / "text", n_docs=6), "conll": write_conll(root / "ner.conll", n=10),
            "sentiment": str(sentiment)}


def run(tmp_path, *args) -> tuple[dict, list[dict]]:
    out = tmp_path / "out"
    assert main([*args, "--out", str(out), "--no-progress", "--max-new-tokens", "4"]) == 0
    with open(out / "predictions.jsonl") as f:
        rows = [json.loads(line) for line in f]
    with open(out / "eval.json") as f:
        return json.load(f), rows


def test_causal_lm_loss_and_accuracy_are_transformers_on_the_same_tokens(files, tmp_path):
    result, rows = run(tmp_path, "--model", files["llama"], "--data", files["text"], "--task", "causal_lm",
                       "--no-general")
    model = transformers.AutoModelForCausalLM.from_pretrained(files["llama"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(files["llama"])
    nll = correct = count = 0.0
    for name in sorted(os.listdir(files["text"])):
        with open(os.path.join(files["text"], name)) as f:
            ids = tokenizer(f.read())["input_ids"] + [tokenizer.eos_token_id]
        assert len(ids) <= 257  # one row each at --seq-len 256
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1]
        targets = torch.tensor(ids[1:])
        nll += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        correct += float((logits.argmax(-1) == targets).sum())
        count += len(targets)
    scores = result["scores"]
    assert scores["tokens"] == count and rows == []
    assert scores["loss"] == pytest.approx(nll / count, rel=1e-4)
    assert scores["token_accuracy"] == pytest.approx(correct / count)
    assert scores["perplexity"] == pytest.approx(np.exp(nll / count), rel=1e-3)


def test_sft_answers_are_scored_against_their_references(files, tmp_path):
    result, rows = run(tmp_path, "--model", files["llama"], "--data", files["sft"], "--max-examples", "10")
    assert result["task"] == "sft" and result["examples"] == 10 and len(rows) == 10
    scores = result["scores"]
    assert {"loss", "perplexity", "token_accuracy"} <= set(scores)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = np.mean([scorer.score(r["reference"], r["prediction"])["rougeL"].fmeasure for r in rows])
    assert scores["answers"]["rouge_l"] == pytest.approx(rouge)
    assert rows[0]["prompt"] and rows[0]["finish_reason"] in ("stop", "length")
    general = result["general"]
    assert len(general["answers"]) >= 10 and {"repeat_4", "hit_token_limit", "distinct_2"} <= set(general["scores"])


def test_token_classification_tags_are_the_transformers_taggers(files, tmp_path):
    result, rows = run(tmp_path, "--model", files["tagger"], "--data", files["conll"])
    assert result["task"] == "token_classification" and len(rows) == 10
    model = transformers.AutoModelForTokenClassification.from_pretrained(files["tagger"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(files["tagger"])
    for row in rows:
        encoded = tokenizer(row["tokens"], is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            best = model(**encoded).logits[0].argmax(-1).tolist()
        ids = encoded.word_ids()
        firsts = [i for i, w in enumerate(ids) if w is not None and (i == 0 or ids[i - 1] != w)]
        assert row["predicted"] == [TAGS[best[i]] for i in firsts]
    import seqeval.metrics

    true, predicted = [r["true"] for r in rows], [r["predicted"] for r in rows]
    assert result["scores"]["f1"] == pytest.approx(seqeval.metrics.f1_score(true, predicted, zero_division=0))
    assert "B-person" in result["scores"]["tag_report"]
    assert os.path.exists(tmp_path / "out" / "report.txt")


def test_classification_by_generation_with_few_shot_examples(files, tmp_path):
    result, rows = run(tmp_path, "--model", files["llama"], "--data", files["sentiment"], "--few-shot", "2",
                       "--shots-from", files["sentiment"], "--no-general")
    assert result["task"] == "classification" and result["few_shot"] == 2 and len(rows) == 16
    scores = result["scores"]
    true, predicted = [r["label"] for r in rows], [r["predicted"] for r in rows]
    assert scores["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(true, predicted))
    assert scores["unparsed"] == predicted.count("(no label)")
    assert set(true) == {"bad", "good"}
    assert Path(tmp_path / "out" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_a_sequence_classifier_is_scored_from_its_logits_as_transformers_computes_them(files, tmp_path):
    classifier = str(tmp_path / "classifier")
    tiny_bert(classifier, num_labels=2, head="sequence", seed=3)
    with open(os.path.join(classifier, "config.json")) as f:
        config = json.load(f)
    config["id2label"], config["label2id"] = {"0": "bad", "1": "good"}, {"bad": 0, "good": 1}
    with open(os.path.join(classifier, "config.json"), "w") as f:
        json.dump(config, f)
    bert_tokenizer(classifier).save_pretrained(classifier)
    result, rows = run(tmp_path, "--model", classifier, "--data", files["sentiment"])
    assert result["task"] == "classification" and len(rows) == 16 and "general" not in result
    model = transformers.AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(classifier)
    with torch.no_grad():
        best = model(**tokenizer([r["text"] for r in rows], return_tensors="pt", padding=True)).logits.argmax(-1)
    assert [r["predicted"] for r in rows] == [["bad", "good"][i] for i in best.tolist()]
    true, predicted = [r["label"] for r in rows], [r["predicted"] for r in rows]
    assert result["scores"]["macro_f1"] == pytest.approx(sklearn.metrics.f1_score(true, predicted, average="macro"))
    assert result["scores"]["confusion_matrix"] == sklearn.metrics.confusion_matrix(
        true, predicted, labels=["bad", "good"]).tolist()


@pytest.mark.parametrize("args, message", [
    (["--data", "missing.jsonl"], "missing.jsonl"),
    (["--data", "{sft}", "--few-shot", "1"], "--shots-from"),
    (["--data", "{conll}", "--model", "{tagger}", "--few-shot", "1", "--shots-from", "{conll}"],
     "--few-shot needs a generative model"),
])
def test_bad_input_is_one_line_and_exit_status_2(files, tmp_path, capsys, args, message):
    args = [a.format(**files) for a in args]
    if "--model" not in args:
        args += ["--model", files["llama"]]
    assert main([*args, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
