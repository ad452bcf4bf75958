"""Benchmark: `jaxlm serve` answering N concurrent clients against the same requests one by one.

    .venv/bin/python scripts/bench_serve.py [--model FILE_OR_FOLDER] [--clients 16] [--new-tokens 64] [--int8]
                                            [--llama-cpp PYTHON]

Starts `jaxlm serve` as a subprocess on a free port (default model: the shipped SmolLM2-135M GGUF), waits
for /health, warms every prompt up once (so each prompt bucket is compiled), then sends the --clients chat
requests with the official `openai` client, streaming: first one after another, then all at once. Greedy,
exactly --new-tokens tokens each (`ignore_eos`). Reports, for both: throughput (new tokens over wall time),
time to first token and request latency (p50/p99), and the concurrency speed-up.

With `--llama-cpp PYTHON` (an interpreter that has `llama-cpp-python[server]`; by default this one when
`llama_cpp` imports), the same model goes through `jaxlm convert` to a GGUF of the same precision class (f16
beside jaxlm's float32, q8_0 beside --int8), llama.cpp's server answers the same concurrent requests with
as many threads as jaxlm has cores, and the last line is jaxlm's throughput over llama.cpp's.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx2 as httpx
import openai

from jaxlm import assets

PROMPTS = [
    "What is the capital of France?", "Write a short poem about the sea.", "Explain gravity to a child.",
    "List three fruits and their colours.", "How do airplanes fly?", "Tell me a joke about computers.",
    "What is the difference between weather and climate?", "Describe a cat in two sentences.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "jaxlm", "serve", args.model, "--port", str(port), "--served-model-name",
               "bench", "--max-batch", str(args.clients), "--max-context", str(args.max_context)]
    if args.int8:
        command += ["--quantize", "int8"]
    return wait_until_healthy(command, f"http://127.0.0.1:{port}/health")


def start_llama_cpp(args, port: int, gguf: str) -> subprocess.Popen:
    """llama.cpp's OpenAI-compatible server (llama-cpp-python) on `gguf`, one slot per process as it serves."""
    command = [args.llama_cpp, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "bench", "--host",
               "127.0.0.1", "--port", str(port), "--n_ctx", str(args.max_context), "--n_threads",
               str(os.cpu_count()), "--n_threads_batch", str(os.cpu_count()), "--verbose", "false",
               "--interrupt_requests", "false"]  # queue concurrent requests (its default cuts the running one off)
    return wait_until_healthy(command, f"http://127.0.0.1:{port}/v1/models")


def wait_until_healthy(command: list[str], url: str) -> subprocess.Popen:
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}: {' '.join(command)}")
        try:
            if httpx.get(url).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise SystemExit(f"{' '.join(command[:4])} did not become healthy in 10 minutes")


def measure(args, server: subprocess.Popen, port: int, prompts: list[str]) -> tuple[dict, dict]:
    """(one by one, all at once) against the server on `port`, which is stopped afterwards."""
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=3600)
        run(client, PROMPTS, 2, len(PROMPTS))  # warm-up: every prompt bucket compiled
        return run(client, prompts, args.new_tokens, 1), run(client, prompts, args.new_tokens, args.clients)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)


def report(name: str, alone: dict, together: dict, clients: int) -> None:
    for way, figures in (("one by one", alone), (f"{clients} concurrent", together)):
        print(f"{name} {way:>14}: {figures['tokens/s']:7.1f} tokens/s ({figures['tokens']} tokens in "
              f"{figures['wall']:.1f} s); time to first token p50 {figures['ttft'][0]:.3f} s p99 "
              f"{figures['ttft'][1]:.3f} s; latency p50 {figures['latency'][0]:.2f} s "
              f"p99 {figures['latency'][1]:.2f} s")
    print(f"{name} concurrency speed-up: {together['tokens/s'] / alone['tokens/s']:.2f}x the throughput of one by one",
          flush=True)


def one_request(client, prompt: str, new_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, seconds in all, tokens) of one streamed chat request. Tokens are the
    usage's count, else the content chunks (llama-cpp-python streams one token a chunk and sends no usage)."""
    start, first, tokens, chunks = time.perf_counter(), None, 0, 0
    stream = client.chat.completions.create(
        model="bench", messages=[{"role": "user", "content": prompt}], max_tokens=new_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            if first is None:
                first = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return first if first is not None else float("nan"), time.perf_counter() - start, tokens or chunks


def run(client, prompts, new_tokens: int, clients: int) -> dict:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda p: one_request(client, p, new_tokens), prompts))
    wall = time.perf_counter() - start
    ttft, latency, tokens = zip(*results, strict=True)
    return {"tokens/s": sum(tokens) / wall, "ttft": percentiles(ttft), "latency": percentiles(latency),
            "wall": wall, "tokens": sum(tokens)}


def percentiles(values) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the shipped SmolLM2-135M-Instruct GGUF")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (and --max-batch)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-context", type=int, default=256)
    parser.add_argument("--int8", action="store_true", help="serve with --quantize int8 (llama.cpp: q8_0)")
    parser.add_argument("--llama-cpp", metavar="PYTHON", default=sys.executable if importlib.util.find_spec(
        "llama_cpp") else None, help="an interpreter with llama-cpp-python[server]: compare with llama.cpp's server "
        "(default: this one when llama_cpp imports, else no comparison)")
    args = parser.parse_args()
    args.model = args.model or assets.smollm2_gguf()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.clients)]
    print(f"model {os.path.basename(args.model)}, {args.clients} requests of {args.new_tokens} tokens, "
          f"{os.cpu_count()} CPUs{', int8' if args.int8 else ''}", flush=True)
    port = free_port()
    alone, together = measure(args, start_server(args, port), port, prompts)
    report("jaxlm serve", alone, together, args.clients)
    if not args.llama_cpp:
        return
    with tempfile.TemporaryDirectory() as tmp:
        gguf = os.path.join(tmp, "model.gguf")
        subprocess.run([sys.executable, "-m", "jaxlm", "convert", args.model, gguf, "--type",
                        "q8_0" if args.int8 else "f16"], check=True, stdout=subprocess.DEVNULL)
        port = free_port()
        cpp_alone, cpp_together = measure(args, start_llama_cpp(args, port, gguf), port, prompts)
    report("llama.cpp server", cpp_alone, cpp_together, args.clients)
    print(f"jaxlm serve ({'int8' if args.int8 else 'float32'}) / llama.cpp server "
          f"({'q8_0' if args.int8 else 'f16'}) at {args.clients} concurrent: "
          f"{together['tokens/s'] / cpp_together['tokens/s']:.2f}x the throughput")


if __name__ == "__main__":
    main()
