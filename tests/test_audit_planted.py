"""The audit flags exactly the records where a problem was planted, with the right reason.

One small mixed file (text, prompt/completion, labelled text, NER, grounded
records) of clean records made of invented words, plus one planted problem per
flag reason. The audit runs once (no model: perplexity is covered in
test_audit_models.py); each test checks one reason.
"""

import json
import random

import pytest

from jaxlm.audit import AuditConfig, run_audit
from jaxlm.audit.lexicons import profanity_lexicon, sentiment_lexicon

# Invented words: no lexicon (sentiment, profanity, demographic) knows them, so clean
# records trip no screen, and random sequences of them share no long spans.
_SYLLABLES = ["ka", "lo", "mi", "ru", "te", "so", "vi", "na", "pe", "du", "zo", "fa", "gi", "be", "tu"]


def _vocabulary(rng):
    words = set()
    while len(words) < 500:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))))
    profane, rated = profanity_lexicon(), sentiment_lexicon()
    return sorted(w for w in words if not (profane.find([w]) or rated.find([w])))


RNG = random.Random(7)
VOCAB = _vocabulary(RNG)


def prose(n_words):
    """Sentence-like text with no word repeated, so no n-gram repeats."""
    return " ".join(RNG.sample(VOCAB, n_words)) + "."


def _planted_dataset():
    """(records, {index: expected reasons}, eval records, reference records)."""
    records, expected = [], {}

    def add(record, *reasons):
        records.append(record)
        if reasons:
            expected[len(records) - 1] = set(reasons)
        return len(records) - 1

    long_texts = [prose(80) for _ in range(8)]
    for text in long_texts:
        add({"text": text})
    for _ in range(5):
        add({"prompt": prose(8).rstrip(".") + "?", "completion": prose(15)})
    add({"tokens": ["Vika", "Lomi", "went", "home"], "tags": ["B-PER", "I-PER", "O", "O"]})
    add({"text": prose(12), "label": "positive"})
    add({"text": prose(12), "label": "negative"})
    passage = prose(40)
    add({"prompt": "Sumo tefa?", "completion": " ".join(passage.split()[3:9]), "passage": passage})
    same_prompt = prose(6).rstrip(".") + "?"  # answered twice in other words: consistent
    add({"prompt": same_prompt, "completion": "kalo miru is the tesovi of nape"})
    add({"prompt": same_prompt, "completion": "the tesovi of nape is kalo miru indeed"})

    eval_long, eval_short = prose(30), prose(8)
    reference = prose(100)

    add({"text": "  " + long_texts[2].upper().replace(" ", "   ") + "  "}, "duplicate")
    near = long_texts[3].split()
    near[40] = "zozozo"
    add({"text": " ".join(near)}, "near_duplicate")
    add({"text": prose(10) + " " + " ".join(eval_long.split()[5:25]) + " " + prose(10)}, "contamination")
    add({"prompt": prose(5), "completion": eval_short}, "contamination")
    add({"text": prose(15) + " " + " ".join(reference.split()[30:55]) + " " + prose(15)}, "reference_copy")
    add({"prompt": "Fapedu?", "completion": prose(8), "passage": prose(40)}, "unsupported_answer")
    add({"text": "ka lo mi ru " * 12}, "repetition")
    add({"text": prose(20) + " caf\ufffd"}, "encoding")
    add({"text": prose(20) + "\x07"}, "encoding")
    conflicting_prompt = prose(7).rstrip(".") + "?"
    add({"prompt": conflicting_prompt, "completion": "tevina dusopa"}, "contradiction")
    add({"prompt": conflicting_prompt, "completion": "gibefa kaloru mite"}, "contradiction")
    labelled = prose(12)
    add({"text": labelled, "label": "positive"}, "label_conflict")
    add({"text": labelled, "label": "negative"}, "label_conflict", "duplicate")
    add({"tokens": ["in", "Rusote", "Vikalo"], "tags": ["O", "I-LOC", "I-LOC"]}, "invalid_bio")
    add({"text": prose(10) + " you fucking idiot " + prose(5)}, "toxicity")
    add({"text": prose(6) + " the women were terrible and awful " + prose(6)}, "bias_term")
    evals = [{"text": eval_long}, {"text": eval_short}, {"text": prose(30)}]
    return records, expected, evals, [{"text": reference}]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    records, expected, evals, references = _planted_dataset()
    config = AuditConfig(
        data=_write_jsonl(tmp / "data.jsonl", records), out=str(tmp / "out"),
        evals=[_write_jsonl(tmp / "eval.jsonl", evals)],
        references=[_write_jsonl(tmp / "reference.jsonl", references)],
        model=None, embedder="tfidf", progress=False)
    result = run_audit(config)
    with open(tmp / "out" / "flagged.jsonl") as f, open(tmp / "out" / "clean.jsonl") as c:
        flagged, clean = [json.loads(line) for line in f], [json.loads(line) for line in c]
    return {"records": records, "expected": expected, "result": result, "flagged": flagged,
            "clean": clean}


PLANTED_REASONS = ["duplicate", "near_duplicate", "contamination", "reference_copy", "unsupported_answer",
                   "repetition", "encoding", "contradiction", "label_conflict", "invalid_bio", "toxicity",
                   "bias_term"]


@pytest.mark.parametrize("reason", PLANTED_REASONS)
def test_flags_exactly_the_planted_records_for(reason, audited):
    planted = {i for i, reasons in audited["expected"].items() if reason in reasons}
    flagged = {f["index"] for f in audited["flagged"] if reason in f["reasons"]}
    assert planted, "the fixture plants at least one record per reason"
    assert flagged == planted


def test_clean_records_are_not_flagged(audited):
    flagged = {f["index"] for f in audited["flagged"]}
    assert flagged == set(audited["expected"])


def test_each_flagged_record_lists_all_its_reasons(audited):
    for entry in audited["flagged"]:
        assert set(entry["reasons"]) == audited["expected"][entry["index"]]


def test_flagged_lines_carry_index_line_details_and_the_record(audited):
    for entry in audited["flagged"]:
        assert entry["line"] == entry["index"] + 1  # one JSON record per line
        assert entry["record"] == audited["records"][entry["index"]]
        assert set(entry["details"]) == set(entry["reasons"])


def test_duplicate_points_to_the_first_copy(audited):
    duplicate = next(f for f in audited["flagged"] if f["reasons"] == ["duplicate"])
    assert duplicate["details"]["duplicate"] == {"of": 2}


def test_contamination_names_the_eval_record(audited):
    overlaps = [f["details"]["contamination"]["overlaps"] for f in audited["flagged"]
                if "contamination" in f["reasons"]]
    assert [[o["eval_index"] for o in found] for found in overlaps] == [[0], [1]]


def test_clean_file_drops_the_default_reasons_and_keeps_screens(audited):
    removable = {"duplicate", "near_duplicate", "contamination", "encoding", "invalid_bio", "label_conflict"}
    kept = [r for i, r in enumerate(audited["records"])
            if not (audited["expected"].get(i, set()) & removable)]
    assert audited["clean"] == kept
    assert any("fucking" in r.get("text", "") for r in audited["clean"])  # toxicity only flags


def test_report_counts_match_the_flags(audited):
    report = audited["result"].report
    assert report["input"]["records"] == len(audited["records"])
    assert report["duplication"]["exact_duplicates"] == 2
    assert report["duplication"]["near_clusters"]["size_histogram"] == {"2": 1}
    assert report["contamination"]["contaminated_records"] == 2
    assert report["consistency"]["contradictions"]["contradicting_prompts"] == 1
    assert report["labels"]["label_distribution"] == {"positive": 2, "negative": 2}
    assert report["labels"]["entity_distribution"] == {"PER": 1}
    assert report["bias"]["categories"]["gender"]["groups"]["female"]["mentions"] == 1
    assert report["flags"]["removed_records"] == len(audited["records"]) - len(audited["clean"])


def test_topics_are_clustered_on_a_sample(audited):
    topics = audited["result"].report["diversity"]["topics"]
    assert topics["embedder"] == "tfidf"
    assert sum(c["size"] for c in topics["clusters"]) == topics["sample"] == len(audited["records"])
    assert 0.0 <= topics["spread"] <= 1.0


def test_remove_none_keeps_every_record(tmp_path):
    records = [{"text": "same words here"}, {"text": "same words here"}]
    out = tmp_path / "out"
    run_audit(AuditConfig(_write_jsonl(tmp_path / "d.jsonl", records), out=str(out), model=None,
                          embedder=None, remove=(), progress=False))
    with open(out / "clean.jsonl") as clean, open(out / "flagged.jsonl") as flagged:
        assert (len(clean.readlines()), len(flagged.readlines())) == (2, 1)


def test_ner_conll_files_are_audited_like_jsonl(tmp_path):
    conll = tmp_path / "ner.conll"
    conll.write_text("Vika\tB-PER\nruns\tO\n\nin\tO\nTesolo\tI-LOC\n")
    result = run_audit(AuditConfig(str(conll), out=str(tmp_path / "out"), model=None, embedder=None,
                                   progress=False))
    assert result.report["input"]["kinds"] == {"ner": 2}
    assert result.flags.by_index == {1: {"invalid_bio": [{"position": 1, "token": "Tesolo", "tag": "I-LOC",
                                                          "after": "O"}]}}


def test_generation_efficiency_comes_from_provenance_fields(tmp_path):
    records = [{"text": prose(10), "provenance": {"model": "smollm2", "generated_tokens": 100,
                                                   "generation_seconds": 2.0, "accepted": True}},
               {"text": prose(10), "provenance": {"model": "smollm2", "generated_tokens": 50,
                                                   "generation_seconds": 3.0, "accepted": False}},
               {"text": prose(10)}]
    result = run_audit(AuditConfig(_write_jsonl(tmp_path / "s.jsonl", records), out=str(tmp_path / "o"),
                                   model=None, embedder=None, progress=False))
    generation = result.report["generation"]
    assert generation["records_with_provenance"] == 2
    assert generation["tokens_per_s"] == pytest.approx(150 / 5.0)
    assert generation["acceptance_rate"] == pytest.approx(0.5)
