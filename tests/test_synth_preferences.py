"""`jaxlm synth preferences` on a tiny random model: pairs ranked by the judge, as the judge's own library
scores them, read back as preference records, and resumed exactly after an interruption."""

import json

import numpy as np
import pytest
import sacrebleu
import torch
import transformers
from rouge_score import rouge_scorer

from hf_checkpoints import tiny_bert
from jaxlm.audit import AuditConfig, run_audit
from jaxlm.data.records import read_records
from jaxlm.synth.cli import main
from jaxlm.synth.config import SynthConfig
from jaxlm.synth.generator import Output
from jaxlm.synth.judges import score_answers
from jaxlm.synth.preferences import Preferences, read_jobs
from synth_helpers import lines, without_timing
from train_helpers import bert_tokenizer

PROMPTS = [("Name a river.", "The Nile."), ("Add two and two.", "Four."), ("Give a colour.", "Blue."),
           ("Name a planet.", "Mars.")]
# With test_synth_run: the tiny model is made once, and chat prompts, 2 x 2 candidates (4 rows) of <= 16 new
# tokens, are the shapes its answers compile for (raw-text prompts would compile ~7 s more).


@pytest.fixture(scope="module")
def assets(tmp_path_factory, synth_model):
    tmp = tmp_path_factory.mktemp("preferences")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},  # the answer: a reference
                                                         {"role": "assistant", "content": a}]}) + "\n"
                               for p, a in PROMPTS))
    tiny_bert(tmp / "judge", num_labels=2, head="sequence")
    bert_tokenizer(str(tmp / "judge")).save_pretrained(tmp / "judge")
    return {"tmp": tmp, "model": synth_model, "prompts": str(prompts), "judge": str(tmp / "judge")}


def args(assets, out, judge, *extra):
    return ["preferences", "--model", assets["model"], "--prompts", assets["prompts"], "--out", str(out),
            "--judge", judge, "--num-candidates", "2", "--batch-size", "2", "--max-new-tokens", "8",
            "--temperature", "1.0", "--top-p", "1.0", "--quiet", *extra]


@pytest.fixture(scope="module")
def classifier_run(assets):
    out = assets["tmp"] / "classifier"
    assert main(args(assets, out, assets["judge"])) == 0
    return out


def test_pairs_are_the_best_and_worst_answer_by_the_classifiers_probability(assets, classifier_run):
    judge = transformers.AutoModelForSequenceClassification.from_pretrained(assets["judge"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(assets["judge"])
    pairs = lines(classifier_run / "data.jsonl")
    ties = lines(classifier_run / "rejected.jsonl")
    assert len(pairs) + len(ties) == len(PROMPTS) and pairs
    for pair in pairs:
        candidates = pair["provenance"]["candidates"]
        with torch.no_grad():
            inputs = tokenizer(candidates, padding=True, return_tensors="pt")
            expected = torch.softmax(judge(**inputs).logits, -1)[:, 1].numpy()  # label 1 of two: the default
        np.testing.assert_allclose(pair["provenance"]["scores"]["candidates"], expected, atol=1e-5)
        assert pair["chosen"] == [{"role": "assistant", "content": candidates[int(np.argmax(expected))]}]
        assert pair["rejected"] == [{"role": "assistant", "content": candidates[int(np.argmin(expected))]}]
        assert pair["provenance"]["scores"]["chosen"] > pair["provenance"]["scores"]["rejected"]
    for tie in ties:
        assert tie["provenance"]["rejected_by"] == "tie"
        assert tie["provenance"]["scores"]["chosen"] == tie["provenance"]["scores"]["rejected"]


def test_pairs_are_preference_records_the_trainer_and_the_audit_read(classifier_run, tmp_path):
    records = list(read_records(classifier_run / "data.jsonl"))  # checks them as task dpo does
    assert {r.kind for r in records} == {"preference"}
    for record in records:  # conversational form: the prompt is the conversation before its final answer
        prompt = PROMPTS[record.data["provenance"]["source"]["line"] - 1][0]
        assert record.data["prompt"] == [{"role": "user", "content": prompt}]
    report = run_audit(AuditConfig(data=str(classifier_run / "data.jsonl"), out=str(tmp_path / "audit"),
                                   model=None, embedder=None, progress=False)).report
    assert report["generation"]["records_with_provenance"] == len(records)


def test_an_interrupted_run_resumes_to_what_an_uninterrupted_one_writes(assets, classifier_run, tmp_path,
                                                                        monkeypatch):
    run_batch = Preferences.run_batch
    calls = []

    def interrupted(batch, generator, config):
        calls.append(batch.number)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run_batch(batch, generator, config)

    out = tmp_path / "resumed"
    monkeypatch.setattr(Preferences, "run_batch", staticmethod(interrupted))
    assert main(args(assets, out, assets["judge"])) == 130
    assert json.loads((out / "state.json").read_text())["batches_done"] == 1
    monkeypatch.setattr(Preferences, "run_batch", staticmethod(run_batch))
    assert main(args(assets, out, assets["judge"])) == 0
    for name in ("data.jsonl", "rejected.jsonl"):
        assert without_timing(lines(out / name)) == without_timing(lines(classifier_run / name))


def outputs(*texts, finish="stop"):
    return [Output(text, finish, 4, len(text.split()), 0.0, [-1.0] * len(text.split())) for text in texts]


@pytest.mark.parametrize("judge", ["rouge-l", "chrf"])
def test_reference_judges_score_as_their_libraries_do(judge):
    config = SynthConfig(mode="preferences", out="", judge=judge)
    answers = ["The Nile is a river.", "Mars", "It is the Nile."]
    scores, _ = score_answers(config, "Name a river.", "The Nile.", outputs(*answers))
    if judge == "chrf":
        expected = [sacrebleu.sentence_chrf(a, ["The Nile."]).score / 100 for a in answers]
    else:
        rouge = rouge_scorer.RougeScorer(["rougeL"])
        expected = [rouge.score("The Nile.", a)["rougeL"].fmeasure for a in answers]
    np.testing.assert_allclose(scores, expected, atol=1e-9)


def test_the_filters_judge_ranks_an_answer_by_how_many_checks_it_fails():
    config = SynthConfig(mode="preferences", out="", judge="filters")
    clean, refusal = "Rivers carry water to the sea.", "I'm sorry, I cannot help with that."
    looping = "the river the river the river the river the river the river"
    scores, notes = score_answers(config, "Name a river.", None, outputs(clean, refusal, looping, "")
                                  + outputs(looping, finish="length"))
    assert scores[0] == 1.0 and notes[0]["fails"] == []
    assert notes[1]["fails"] == ["refusal"] and notes[3]["fails"][0] == "empty"
    assert scores[0] > scores[1] > scores[4] and scores[2] > scores[4]  # truncated and repetitive: lowest


def test_prompts_and_their_references_by_record_kind(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "Name a river.", "gold": "The Nile."}, {"prompt": "Add two and two.", "completion": "Four."},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}]))
    config = SynthConfig(mode="preferences", out="", prompts=str(path), reference_field="gold")
    assert [(job["prompt"], job["reference"]) for job in read_jobs(config)] == [
        ("Name a river.", "The Nile."), ("Add two and two.", "Four."), ([{"role": "user", "content": "Hi"}], "Hello.")]
    config.chat = True  # a string prompt becomes a user turn, so the pairs are conversational
    assert [job["prompt"] for job in read_jobs(config)][:2] == [
        [{"role": "user", "content": "Name a river."}], [{"role": "user", "content": "Add two and two."}]]
