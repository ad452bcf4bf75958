"""Offline paraphrasing writes a new JSONL with provenance, targets untouched."""

import inspect
import json

import pytest

from jaxlm.data.paraphrase import paraphrase_file
from jaxlm.data.records import read_records


class EchoTokenizer:
    chat_template = None


def fake_generate(model, tokenizer, prompts, *, max_new_tokens, temperature, seed):
    return [f"paraphrase {seed}.{i}" for i in range(len(prompts))]


def write_inputs(path):
    rows = [{"text": "a cat sat"},
            {"prompt": "Name a colour.", "completion": "Blue", "source": "quiz"},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_paraphrases_replace_inputs_and_record_provenance(tmp_path):
    source = write_inputs(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    count = paraphrase_file(source, str(out), model=None, tokenizer=EchoTokenizer(), seed=7,
                            temperature=0.5, model_name="stub", generate=fake_generate, batch_size=2)
    records = list(read_records(out))
    assert count == 3 and [r.kind for r in records] == ["text", "prompt_completion", "messages"]
    assert records[0].data["text"] == "paraphrase 7.0"
    assert records[1].data["prompt"] == "paraphrase 7.1" and records[1].data["completion"] == "Blue"
    assert records[1].data["source"] == "quiz"
    assert records[2].data["messages"][1]["content"] == "hello"  # the assistant turn is a target
    provenance = records[1].data["provenance"]
    assert provenance["paraphrase_of"] == {"path": source, "line": 2}
    assert provenance["original"] == "Name a colour."
    assert (provenance["model"], provenance["seed"], provenance["temperature"]) == ("stub", 7, 0.5)


def test_paraphrasing_matches_the_jaxlm_generate_signature():
    try:
        from jaxlm import generate
    except ImportError:
        pytest.skip("jaxlm.generate is not importable yet")
    parameters = inspect.signature(generate).parameters
    assert list(parameters)[:3] == ["model", "tokenizer", "prompts"]
    assert {"max_new_tokens", "temperature", "seed"} <= set(parameters)
