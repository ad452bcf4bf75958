"""`python -m jaxlm.synth` end to end on a tiny random model: outputs, determinism, resume after a kill.

The model writes word salad; these tests are about the machinery (what is written, counted,
resumed), not about the quality of the data.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from jaxlm.audit import AuditConfig, run_audit
from jaxlm.data.records import read_records
from jaxlm.synth.cli import main
from jaxlm.synth.config import FILTERS
from synth_helpers import lines, without_timing

SEED_TASKS = [
    ("Name a river.", "The Nile."), ("Add two and two.", "Four."), ("Say hello in French.", "Bonjour."),
    ("Give a colour.", "Blue."), ("Name a planet.", "Mars."), ("Spell cat backwards.", "tac."),
]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def assets(tmp_path_factory, synth_model):
    tmp = tmp_path_factory.mktemp("synth")
    seeds = tmp / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"t{i}", "prompt": p, "completion": c}) + "\n"
                             for i, (p, c) in enumerate(SEED_TASKS)))
    return {"tmp": tmp, "model": synth_model, "seeds": str(seeds)}


def self_instruct_args(assets, out, *extra):
    return ["self-instruct", "--model", assets["model"], "--seeds", assets["seeds"], "--out", str(out),
            "--num", "6", "--batch-size", "4", "--max-new-tokens", "8", "--instruction-tokens", "8",
            "--examples-per-prompt", "2", "--temperature", "1.0", "--top-p", "1.0", "--rounds", "2",
            "--no-filter", "truncated", "--filter", "min_instruction_words=1", "--quiet", *extra]


@pytest.fixture(scope="module")
def reference_run(assets):
    out = assets["tmp"] / "reference"
    assert main(self_instruct_args(assets, out)) == 0
    return out


def test_kept_records_are_messages_with_provenance_the_audit_reads(reference_run):
    records = list(read_records(reference_run / "data.jsonl"))
    summary = json.loads((reference_run / "summary.json").read_text())
    assert len(records) == summary["kept"] == 6
    assert {r.kind for r in records} == {"messages"}
    provenance = records[0].data["provenance"]
    for key in ("mode", "model", "sampling", "round", "seed_ids", "scores", "prompt_tokens",
                "generated_tokens", "generation_seconds", "attempts"):
        assert key in provenance, key
    assert {"echo_rouge_l", "perplexity", "novelty_rouge_l", "near_duplicate_jaccard"} <= set(provenance["scores"])
    assert sum(r.data["provenance"]["attempts"] for r in records) <= summary["generated"]


def test_summary_counts_every_candidate_once(reference_run):
    summary = json.loads((reference_run / "summary.json").read_text())
    rejected = lines(reference_run / "rejected.jsonl")
    assert set(summary["rejected"]) == set(FILTERS)
    assert summary["generated"] == summary["kept"] + sum(summary["rejected"].values())
    assert sum(summary["rejected"].values()) == len(rejected)
    for record in rejected:
        assert summary["rejected"][record["provenance"]["rejected_by"]] > 0
    assert summary["new_tokens"] > 0 and summary["new_tokens_per_s"] > 0
    assert sum(r["generated"] for r in summary["rounds"]) == summary["generated"]


def test_the_same_seed_gives_the_same_data(assets, reference_run, tmp_path):
    assert main(self_instruct_args(assets, tmp_path / "again")) == 0
    for name in ("data.jsonl", "rejected.jsonl"):
        assert without_timing(lines(tmp_path / "again" / name)) == without_timing(lines(reference_run / name))


def test_a_killed_run_resumes_with_no_duplicates_and_no_losses(assets, reference_run, tmp_path):
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "jaxlm.synth", *self_instruct_args(assets, out)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None:
            state = out / "state.json"
            if state.exists() and json.loads(state.read_text())["batches_done"] >= 1:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        process.kill()
    done_before = json.loads((out / "state.json").read_text())["kept"]
    assert done_before < 6
    assert main(self_instruct_args(assets, out)) == 0
    for name in ("data.jsonl", "rejected.jsonl"):
        assert without_timing(lines(out / name)) == without_timing(lines(reference_run / name))


def test_resume_drops_a_half_written_batch_and_a_larger_num_continues(assets, reference_run, tmp_path, capsys):
    out = tmp_path / "grown"
    out.mkdir()
    for name in ("data.jsonl", "rejected.jsonl", "state.json"):
        (out / name).write_bytes((reference_run / name).read_bytes())
    with open(out / "data.jsonl", "a") as f:
        f.write('{"messages": [{"role": "user", "content": "half a batch')  # died mid-write
    assert main(self_instruct_args(assets, out, "--num", "8")) == 0
    assert "dropped the 55 bytes of a batch that was being written" in capsys.readouterr().err
    kept = without_timing(lines(out / "data.jsonl"))
    assert len(kept) == 8
    assert kept[:6] == without_timing(lines(reference_run / "data.jsonl"))


def test_a_rerun_of_a_finished_run_changes_nothing_and_keeps_its_rounds(assets, reference_run, tmp_path):
    out = tmp_path / "finished"
    shutil.copytree(reference_run, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"]
    assert main(self_instruct_args(assets, out)) == 0
    assert json.loads((out / "summary.json").read_text())["rounds"] == summary["rounds"]  # was []
    assert (out / "data.jsonl").read_bytes() == (reference_run / "data.jsonl").read_bytes()


def _damaged_copy(reference_run, out, name, damage):
    shutil.copytree(reference_run, out)
    (out / name).write_bytes(damage((out / name).read_bytes()))


@pytest.mark.parametrize("name, damage, message", [
    ("data.jsonl", lambda b: b.replace(b'\n{"', b'\n["', 1), "data.jsonl:2: not a JSON record"),  # line 2 of 6
    ("state.json", lambda b: b[:-30], "state.json: not a readable run state"),
    ("state.json", lambda b: b.replace(b'"sizes"', b'"sizez"'), "state.json: not a readable run state"),
    ("data.jsonl", lambda b: b[:-30], "data.jsonl: shorter (")])  # cut inside what state.json counts
def test_a_damaged_run_folder_is_refused_in_one_line(assets, reference_run, tmp_path, capsys, name, damage, message):
    """Was a JSONDecodeError or KeyError traceback. The run's own torn write (a line after what state.json
    counts) is the other case: dropped with a warning and generated again (above)."""
    _damaged_copy(reference_run, tmp_path / "damaged", name, damage)
    assert main(self_instruct_args(assets, tmp_path / "damaged")) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message in error and error.startswith("synth error: "), error


def test_resuming_with_other_options_is_refused_naming_the_option(assets, reference_run, tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    for name in ("data.jsonl", "rejected.jsonl", "state.json"):
        (out / name).write_bytes((reference_run / name).read_bytes())
    assert main(self_instruct_args(assets, out, "--temperature", "0.5")) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "temperature=1.0" in error


@pytest.mark.parametrize("extra, message", [
    (["--no-filter", "bogus"], "bogus"),
    (["--filter", "novelty=0.5"], "novelty=0.5"),
    (["--num", "0"], "--num"),
    (["--model", "/nowhere/model"], "/nowhere/model"),
])
def test_bad_options_exit_2_with_one_line(assets, tmp_path, capsys, extra, message):
    assert main(self_instruct_args(assets, tmp_path / "bad", *extra)) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message in error


def test_the_audit_reads_the_generation_provenance(reference_run, tmp_path):
    report = run_audit(AuditConfig(data=str(reference_run / "data.jsonl"), out=str(tmp_path / "audit"),
                                   model=None, embedder=None, progress=False)).report
    summary = json.loads((reference_run / "summary.json").read_text())
    records = lines(reference_run / "data.jsonl")
    generation = report["generation"]
    assert generation["records_with_provenance"] == 6
    assert generation["acceptance_rate"] == pytest.approx(6 / sum(r["provenance"]["attempts"] for r in records))
    assert generation["generated_tokens"] == sum(r["provenance"]["generated_tokens"] for r in records)
    assert summary["kept"] == 6


def test_grounded_records_keep_their_passage_and_its_id(assets, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"p{i}", "text": f"Passage {i} tells of rivers and hills."}) + "\n"
                              for i in range(6)))
    out = tmp_path / "grounded"
    args = ["grounded", "--model", assets["model"], "--corpus", str(corpus), "--out", str(out), "--num", "10",
            "--batch-size", "4", "--max-new-tokens", "8", "--instruction-tokens", "8", "--closed-book",
            "--no-filter", "truncated", "--no-filter", "support", "--filter", "min_instruction_words=1", "--quiet"]
    assert main(args) == 0
    records = lines(out / "data.jsonl") + lines(out / "rejected.jsonl")
    assert len(records) == 6  # one candidate per passage, then the corpus ran out (short of --num)
    assert not json.loads((out / "summary.json").read_text())["complete"]
    for record in records:
        assert record["passage"].startswith("Passage ") and record["provenance"]["passage_id"].startswith("p")
        if "support" in record["provenance"]["scores"]:
            assert record["messages"][0]["content"] == record["provenance"]["question"]


def test_back_translation_rewrites_user_turns_and_keeps_answers(assets, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in SEED_TASKS))
    out = tmp_path / "bt"
    args = ["back-translate", "--model", assets["model"], "--data", str(data), "--out", str(out), "--num", "6",
            "--batch-size", "4", "--max-new-tokens", "8", "--no-filter", "truncated", "--no-filter", "chrf",
            "--filter", "min_instruction_words=1", "--quiet"]
    assert main(args) == 0
    records = lines(out / "data.jsonl") + lines(out / "rejected.jsonl")
    assert sorted(r["provenance"]["original"][0] for r in records) == sorted(p for p, _ in SEED_TASKS)
    for record in records:
        original = dict(SEED_TASKS)[record["provenance"]["original"][0]]
        assert record["messages"][1] == {"role": "assistant", "content": original}
        assert 0.0 <= record["provenance"]["scores"]["chrf"] <= 100.0


@pytest.mark.slow
def test_relevant_passages_come_first_by_minilm_similarity(minilm_dir):
    from jaxlm.audit.embeddings import ModelEmbedder
    from jaxlm.synth.grounded import rank_by_relevance

    passages = ["The oven bakes bread and cakes at two hundred degrees.",
                "Eagles and sparrows are birds that build nests and fly.",
                "The compiler turns source code into machine instructions.",
                "A river carries water from the mountains to the sea."]
    order = rank_by_relevance(passages, ["birds and their nests"], ModelEmbedder(minilm_dir))
    assert sorted(order) == [0, 1, 2, 3] and order[0] == 1
    order = rank_by_relevance(passages, ["baking a cake", "programming languages"], ModelEmbedder(minilm_dir))
    assert set(order[:2]) == {0, 2}  # the closest of several example tasks counts
