"""`python -m jaxlm.generate`: prompts from flags or JSONL, streamed text or JSON lines, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import jaxlm
from jaxlm.sampling.cli import main
from test_sampling_api import tiny_chat_checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(tiny_chat_checkpoint(tmp_path_factory.mktemp("cli_model")))


def run_cli(capsys, *argv):
    code = main([*argv, "--compile-cache", "none"])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_explains_the_options():
    out = subprocess.run([sys.executable, "-m", "jaxlm.generate", "--help"], capture_output=True, text=True, check=True)
    for option in ("--model", "--prompt", "--prompts-file", "--chat", "--json", "--max-new-tokens", "--top-p"):
        assert option in out.stdout
    assert "SmolLM2" in out.stdout  # the default model is named


def test_single_prompt_streams_the_completion(model_dir, capsys):
    code, out, err = run_cli(capsys, "--model", model_dir, "--prompt", "hello", "--chat", "--max-new-tokens", "12",
                             "--ignore-eos")
    model, tokenizer = jaxlm.load_pretrained(model_dir)
    expected = jaxlm.generate(model, tokenizer, "hello", max_new_tokens=12, chat=True, stop_at_eos=False)
    assert code == 0
    assert out == expected.texts[0] + "\n"
    assert "12 new tokens" in err


def test_prompts_file_gives_one_json_line_per_prompt(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    chat = [{"role": "user", "content": "hi"}]
    prompts.write_text(json.dumps({"prompt": "hello"}) + "\n\n" + json.dumps({"messages": chat}) + "\n"
                       + json.dumps("world") + "\n")
    code, out, _ = run_cli(capsys, "--model", model_dir, "--prompts-file", str(prompts), "--json", "--logprobs",
                           "--max-new-tokens", "4")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [r["prompt"] for r in records] == ["hello", chat, "world"]
    for record in records:
        assert set(record) == {"prompt", "text", "token_ids", "finish_reason", "logprobs"}
        assert 1 <= len(record["token_ids"]) <= 4 and len(record["logprobs"]) == len(record["token_ids"])


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--model", str(tmp_path / "nope.gguf"), "--prompt", "hi")
    assert code == 2
    assert f"{tmp_path / 'nope.gguf'}: no such model folder or .gguf file" in err


def test_bad_jsonl_line_names_the_file_and_line(model_dir, tmp_path, capsys):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": oops}\n')
    code, _, err = run_cli(capsys, "--model", model_dir, "--prompts-file", str(prompts))
    assert code == 2
    assert f"{prompts}:2: invalid JSON" in err


def test_jsonl_line_without_a_prompt_names_the_file_and_line(model_dir, tmp_path, capsys):
    prompts = tmp_path / "wrong.jsonl"
    prompts.write_text('{"text": "no prompt key"}\n')
    code, _, err = run_cli(capsys, "--model", model_dir, "--prompts-file", str(prompts))
    assert code == 2
    assert f"{prompts}:1: expected a JSON string or an object with \"prompt\"" in err


def test_missing_prompts_file_is_a_clear_error(model_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "--model", model_dir, "--prompts-file", str(tmp_path / "none.jsonl"))
    assert code == 2
    assert "none.jsonl: no such prompts file" in err


def test_no_prompt_is_a_clear_error(model_dir, capsys):
    code, _, err = run_cli(capsys, "--model", model_dir)
    assert code == 2
    assert "no prompt" in err
