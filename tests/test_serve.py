"""`jaxlm serve` through the official `openai` client, against one server on a tiny Llama started for
this module (uvicorn in a thread, on a free port): answers are checked against `jaxlm.generate`."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import socket
import threading
import time

import httpx2 as httpx
import openai
import pytest
import uvicorn

from jaxlm.eval.cli import main as evaluate
from jaxlm.hf.load import load_pretrained, read_tokenizer
from jaxlm.sampling.api import generate
from jaxlm.serve.cli import build_parser, build_server
from jaxlm.synth.cli import main as synth
from train_helpers import write_tiny_llama

# A short context (synth's prompts need 100 tokens): the cache is short, so rows shift often.
MAX_BATCH, MAX_QUEUE, MAX_CONTEXT, NEW = 4, 4, 128, 16
# Chats of at most 24 tokens and texts of at most 16 (with the tiny tokenizer): two prompt buckets, so
# the server compiles two prefill programs, and one `generate` call gives every expected answer.
QUESTIONS = ["hello", "what is your name", "hi there", "how are you"]
TEXT, LONGER_TEXT = "the dog ran", "the cat sat on a mat and the dog ran to the park"  # 5 and 19 tokens


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = write_tiny_llama(tmp_path_factory.mktemp("serve") / "tiny-llama")
    args = build_parser().parse_args([path, "--max-batch", str(MAX_BATCH), "--max-queue", str(MAX_QUEUE),
                                      "--max-context", str(MAX_CONTEXT), "--request-timeout", "60",
                                      "--compile-cache", "none"])
    app = build_server(args)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 120
    while not _healthy(url):
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not come up"
        time.sleep(0.1)
    yield argparse.Namespace(url=url, path=path, name="tiny-llama")
    uvicorn_server.should_exit = True
    thread.join(timeout=30)
    sock.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health").status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _chat(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def expected(server):
    """`jaxlm.generate`'s greedy answers (NEW tokens, past EOS) to each question and text."""
    model, tokenizer = load_pretrained(server.path)
    result = generate(model, tokenizer, [*map(_chat, QUESTIONS), TEXT, LONGER_TEXT], max_new_tokens=NEW,
                      stop_at_eos=False, return_logprobs=True)
    return {prompt: (result.texts[i], result.logprobs[i], result.prompt_lengths[i])
            for i, prompt in enumerate([*QUESTIONS, TEXT, LONGER_TEXT])}


def test_models_lists_the_served_model(client, server):
    assert [m.id for m in client.models.list().data] == [server.name]


def test_chat_answers_as_generate_does(client, server, expected):
    reply = client.chat.completions.create(model=server.name, messages=_chat("hello"), max_tokens=NEW,
                                           temperature=0, logprobs=True, extra_body={"ignore_eos": True})
    text, logprobs, prompt_tokens = expected["hello"]
    choice = reply.choices[0]
    assert choice.message.content == text
    assert choice.finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, NEW)
    assert [t.logprob for t in choice.logprobs.content] == pytest.approx(logprobs, abs=1e-4)


def test_completions_of_text_and_token_ids(client, server, expected):
    ids = read_tokenizer(server.path)(TEXT)["input_ids"]
    for prompt in (TEXT, ids):
        reply = client.completions.create(model=server.name, prompt=prompt, max_tokens=NEW, temperature=0,
                                          logprobs=0, extra_body={"ignore_eos": True})
        assert reply.choices[0].text == expected[TEXT][0]
        assert reply.choices[0].logprobs.token_logprobs == pytest.approx(expected[TEXT][1], abs=1e-4)
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == NEW


def test_several_prompts_in_one_request(client, server, expected):
    """Admitted one after the other into an idle server: the longer prompt's rows move the shorter one's
    to the right to fit before the shared write slot."""
    reply = client.completions.create(model=server.name, prompt=[TEXT, LONGER_TEXT], max_tokens=NEW, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert [c.text for c in sorted(reply.choices, key=lambda c: c.index)] == [expected[TEXT][0],
                                                                              expected[LONGER_TEXT][0]]
    assert reply.usage.prompt_tokens == expected[TEXT][2] + expected[LONGER_TEXT][2]


def test_streaming_equals_not_streaming(client, server):
    whole = client.chat.completions.create(model=server.name, messages=_chat("hi there"), max_tokens=20,
                                           temperature=0)
    chunks = list(client.chat.completions.create(model=server.name, messages=_chat("hi there"), max_tokens=20,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_n_choices_sample_differently_and_repeat_with_a_seed(client, server):
    def ask():
        return client.completions.create(model=server.name, prompt=TEXT, max_tokens=8, n=3, temperature=1.0,
                                         seed=7, extra_body={"ignore_eos": True})

    first, again = ask(), ask()
    texts = [c.text for c in sorted(first.choices, key=lambda c: c.index)]
    assert [c.index for c in sorted(first.choices, key=lambda c: c.index)] == [0, 1, 2]
    assert len(set(texts)) > 1  # each choice samples with its own key
    assert texts == [c.text for c in sorted(again.choices, key=lambda c: c.index)]
    assert first.usage.completion_tokens == 3 * 8


def test_stop_string_cuts_the_text(client, server):
    full = client.completions.create(model=server.name, prompt=TEXT, max_tokens=16, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop.strip(), f"pick a stop string inside {full!r}"
    for stream in (False, True):
        reply = client.completions.create(model=server.name, prompt=TEXT, max_tokens=16, temperature=0,
                                          stop=[stop], stream=stream, extra_body={"ignore_eos": True})
        chunks = list(reply) if stream else [reply]
        text = "".join(c.choices[0].text for c in chunks)
        assert text == full[: full.index(stop)]
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_concurrent_greedy_answers_equal_answers_alone(client, server, expected):
    def ask(question):
        reply = client.chat.completions.create(model=server.name, messages=_chat(question), max_tokens=NEW,
                                               temperature=0, extra_body={"ignore_eos": True})
        return reply.choices[0].message.content

    def ask_in_turn(first):  # each client asks every question: requests join and leave at different steps
        return [ask(QUESTIONS[(first + i) % len(QUESTIONS)]) for i in range(len(QUESTIONS))]

    alone = [ask(q) for q in QUESTIONS]
    assert alone == [expected[q][0] for q in QUESTIONS]
    with concurrent.futures.ThreadPoolExecutor(MAX_BATCH) as pool:
        together = list(pool.map(ask_in_turn, range(MAX_BATCH)))
    assert together == [alone[first:] + alone[:first] for first in range(MAX_BATCH)]


def _finished(server, reason: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    lines = [line for line in text.splitlines() if line.startswith(f'jaxlm_finished_requests_total{{reason="{reason}"')]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_a_client_that_hangs_up_frees_its_row(client, server):
    before = _finished(server, "cancelled")
    stream = client.completions.create(model=server.name, prompt=TEXT, max_tokens=MAX_CONTEXT - 8,
                                       temperature=0, stream=True, extra_body={"ignore_eos": True})
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 10
    while _finished(server, "cancelled") == before:
        assert time.monotonic() < deadline, "the row was not freed"
        time.sleep(0.05)
    assert "jaxlm_running_requests 0.0" in httpx.get(f"{server.url}/metrics").text


def test_a_full_queue_answers_429(client, server):
    def ask(_):
        try:
            client.completions.create(model=server.name, prompt=TEXT, max_tokens=MAX_CONTEXT - 8,
                                      temperature=0, extra_body={"ignore_eos": True})
            return "ok"
        except openai.RateLimitError as e:
            assert e.status_code == 429 and "--max-queue" in e.message
            return "busy"

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(ask, range(3 * (MAX_BATCH + MAX_QUEUE))))
    assert "busy" in outcomes and "ok" in outcomes


@pytest.mark.parametrize("body, says", [
    ({"messages": _chat("hi"), "max_tokens": -1}, "max_tokens"),
    ({"messages": _chat("hi"), "temperature": -0.5}, "temperature"),
    ({"messages": _chat("hi"), "top_p": 0}, "top_p"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": []}, "messages"),
    ({"messages": _chat("hi"), "model": "gpt-4"}, "is not served here"),
    ({"messages": _chat("hi " * 200)}, "maximum context length"),
    ({"messages": _chat("hi"), "max_tokens": MAX_CONTEXT}, "maximum context length"),
    ({"messages": _chat("hi"), "n": MAX_QUEUE + 1}, "more than --max-queue"),
    ({"messages": _chat("hi"), "stop": ""}, "stop"),
])
def test_bad_requests_answer_400_with_an_error_object(server, body, says):
    reply = httpx.post(f"{server.url}/v1/chat/completions", json={"model": server.name, **body})
    assert reply.status_code == 400, reply.text
    assert says in reply.json()["error"]["message"]
    assert reply.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("content, says", [
    (b'{"model": "tiny-llama", "messages": [', "JSON"),
    (b"[1, 2]", "Input should be"),
])
def test_malformed_json_answers_400(server, content, says):
    reply = httpx.post(f"{server.url}/v1/chat/completions", content=content,
                       headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "Traceback" not in reply.text
    assert says in reply.json()["error"]["message"]


def test_token_ids_past_the_vocabulary_answer_400(server):
    reply = httpx.post(f"{server.url}/v1/completions", json={"model": server.name, "prompt": [1, 10**6]})
    assert reply.status_code == 400 and "not in the vocabulary" in reply.json()["error"]["message"]


def test_synth_through_the_server_writes_what_the_local_engine_writes(server, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "completion": "fine"}) + "\n" for q in QUESTIONS))
    args = ["back-translate", "--data", str(data), "--num", "4", "--batch-size", "4", "--max-new-tokens", "8",
            "--temperature", "0", "--no-filter", "truncated", "--no-filter", "chrf", "--quiet"]
    assert synth([*args, "--model", server.path, "--out", str(tmp_path / "local")]) == 0
    assert synth([*args, "--model", server.name, "--engine", "openai", "--base-url", f"{server.url}/v1",
                  "--concurrency", "4", "--out", str(tmp_path / "served")]) == 0

    def records(run):
        found = []
        for name in ("data.jsonl", "rejected.jsonl"):
            for line in (tmp_path / run / name).read_text().splitlines():
                record = json.loads(line)
                record["provenance"].pop("generation_seconds")
                found.append((record, record["provenance"].pop("model")))
        return found

    local, served = records("local"), records("served")
    assert len(local) == len(QUESTIONS)  # kept or rejected, every question gave a record
    assert [record for record, _ in served] == [record for record, _ in local]
    assert {model for _, model in served} == {f"{server.name} at {server.url}/v1"}


def test_eval_scores_the_answers_of_the_served_model(server, tmp_path, expected):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "completion": "fine"}) + "\n" for q in QUESTIONS))
    assert evaluate(["--base-url", f"{server.url}/v1", "--model", server.name, "--data", str(data),
                     "--out", str(tmp_path / "eval"), "--max-new-tokens", str(NEW), "--no-general",
                     "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [row["prediction"] for row in rows] == [expected[q][0].strip() for q in QUESTIONS]
    scores = json.loads((tmp_path / "eval" / "eval.json").read_text())["scores"]["answers"]
    assert scores["exact_match"] == 0.0 and 0.0 <= scores["rouge_l"] <= 1.0
