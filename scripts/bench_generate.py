"""Benchmark: jaxlm.generate against transformers' generate (PyTorch, KV cache) on SmolLM2-135M.

    .venv/bin/python scripts/bench_generate.py [--new-tokens 128] [--batches 1 8] [--repeats 3] [--int8]

Both sides use float32 weights, the same chat prompts with left padding, greedy decoding
and exactly `--new-tokens` new tokens per row (EOS ignored). Warm-up runs are excluded;
each figure is the median of `--repeats` runs, the sides alternating so that load from
other processes hits all alike. Throughput counts all new tokens of the batch over
prefill + decode wall time; compile time and prefill latency are reported apart.
transformers runs with 1 thread and with all cores, and the faster is the baseline.
With --int8, jaxlm also runs with int8 weights (`load_pretrained(..., quantize="int8")`) and
its speed-up over jaxlm float32 is printed too. When `llama_cpp` (llama-cpp-python) is importable,
llama.cpp runs batch 1 on the same prompt (its high-level API decodes one sequence) with all cores,
on the --model file and on jaxlm's own q8_0 export of it: a column for reference, and a check
that llama.cpp runs what `export_pretrained(..., gguf_type="q8_0")` writes. The last lines print the ratios.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time

import jax.numpy as jnp

import jaxlm
from jaxlm import assets

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain gravity to a child.",
    "List three fruits and their colours.",
    "How do airplanes fly?",
    "Tell me a joke about computers.",
    "What is the difference between weather and climate?",
    "Describe a cat in two sentences.",
]


def shipped_gguf() -> str:
    return assets.smollm2_gguf()


def bench_jaxlm(model, tokenizer, prompts, new_tokens):
    result = jaxlm.generate(model, tokenizer, prompts, max_new_tokens=new_tokens, chat=True, stop_at_eos=False)
    assert all(len(ids) == new_tokens for ids in result.token_ids)
    return {
        "seconds": result.prefill_seconds + result.decode_seconds,
        "prefill": result.prefill_seconds,
        "compile": result.compile_seconds,
    }


def bench_torch(model, tokenizer, prompts, new_tokens, threads):
    import torch

    torch.set_num_threads(threads)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        start = time.perf_counter()
        model.generate(**batch, max_new_tokens=1, **kwargs)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        seconds = time.perf_counter() - start
    assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens
    return {"seconds": seconds, "prefill": prefill, "compile": 0.0}


def bench_llama_cpp(llm, tokenizer, prompt, new_tokens):
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
    llm.reset()  # no reuse of the previous run's cached prompt: each run prefills
    start, prefill, count = time.perf_counter(), 0.0, 0
    for _ in llm.generate(tokens, top_k=1, temp=0.0, reset=False):  # greedy; never stops at EOS by itself
        count += 1  # noqa: SIM113  the count outlives the loop, 0 when it yields nothing
        if count == 1:
            prefill = time.perf_counter() - start
        if count == new_tokens:
            break
    return {"seconds": time.perf_counter() - start, "prefill": prefill, "compile": 0.0}


def llama_cpp_models(model, tokenizer, model_path: str, folder: str) -> dict:
    """name -> llama_cpp.Llama for the --model file (when a .gguf) and jaxlm's q8_0 export; {} without llama_cpp."""
    try:
        import llama_cpp
    except ImportError:
        return {}
    files = {f"llama.cpp {os.path.basename(model_path)}": model_path} if model_path.endswith(".gguf") else {}
    files["llama.cpp jaxlm q8_0"] = jaxlm.export_pretrained(model, os.path.join(folder, "jaxlm-q8_0.gguf"),
                                                            tokenizer, gguf_type="q8_0")
    return {name: llama_cpp.Llama(path, n_ctx=1024, n_threads=os.cpu_count(), n_batch=512, verbose=False)
            for name, path in files.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=shipped_gguf(), help="HF folder or .gguf (default: shipped SmolLM2)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--int8", action="store_true", help="add jaxlm with int8 weights (quantize='int8')")
    parser.add_argument("--torch-threads", type=int, nargs="+",
                        help="torch intra-op thread counts to try; the fastest is the baseline (default: 1 and all "
                        "cores: on shared cores OpenMP's waiting threads can make 1 thread faster)")
    args = parser.parse_args()

    import torch
    import transformers

    thread_counts = args.torch_threads or sorted({1, torch.get_num_threads()})

    model, tokenizer = jaxlm.load_pretrained(args.model, dtype=jnp.float32)
    int8_model = jaxlm.load_pretrained(args.model, quantize="int8")[0] if args.int8 else None
    with tempfile.TemporaryDirectory() as folder:  # transformers reads our export faster than the GGUF
        jaxlm.export_pretrained(model, folder, tokenizer)
        torch_model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        torch_tokenizer = transformers.AutoTokenizer.from_pretrained(folder, padding_side="left")
        llama_cpp = llama_cpp_models(model, tokenizer, args.model, folder)
    print(f"cores: {os.cpu_count()}, torch threads tried: {thread_counts}, new tokens per row: {args.new_tokens}")
    print(f"load average before: {os.getloadavg()[0]:.1f} (other processes on these cores distort both sides)")

    ratios, int8_ratios = [], []
    for batch in args.batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        sides = {"jaxlm": lambda: bench_jaxlm(model, tokenizer, prompts, args.new_tokens)}  # noqa: B023  run below
        if int8_model is not None:
            sides["jaxlm int8"] = lambda: bench_jaxlm(int8_model, tokenizer, prompts, args.new_tokens)  # noqa: B023
        for threads in thread_counts:
            sides[f"transformers/{threads}t"] = functools.partial(
                bench_torch, torch_model, torch_tokenizer, prompts, args.new_tokens, threads)
        for name, llm in llama_cpp.items() if batch == 1 else ():
            sides[name] = functools.partial(bench_llama_cpp, llm, torch_tokenizer, prompts[0], args.new_tokens)
        warmup = {name: run() for name, run in sides.items()}  # jaxlm compiles here
        runs = {name: [] for name in sides}
        for _ in range(args.repeats):
            for name, run in sides.items():
                runs[name].append(run())
        rates = {}
        for name, measured in runs.items():
            seconds = statistics.median(m["seconds"] for m in measured)
            prefill = statistics.median(m["prefill"] for m in measured)
            rates[name] = batch * args.new_tokens / seconds
            compile_note = (f", compile {warmup[name]['compile']:.1f} s (first call only)"
                            if name.startswith("jaxlm") else "")
            print(f"batch {batch} {name:>16}: {rates[name]:6.1f} new tokens/s, prefill {prefill * 1000:6.0f} ms"
                  f"{compile_note}")
        baseline = max((r, name) for name, r in rates.items() if name.startswith("transformers"))
        ratios.append(rates["jaxlm"] / baseline[0])
        print(f"batch {batch} ratio jaxlm / fastest transformers ({baseline[1]}): {ratios[-1]:.2f}x")
        if int8_model is not None:
            int8_ratios.append(rates["jaxlm int8"] / rates["jaxlm"])
            print(f"batch {batch} ratio jaxlm int8 / jaxlm float32: {int8_ratios[-1]:.2f}x")
        for name in (n for n in rates if n.startswith("llama.cpp")):
            best = "jaxlm int8" if "jaxlm int8" in rates else "jaxlm"
            print(f"batch {batch} ratio {best} / {name}: {rates[best] / rates[name]:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print("ratios: " + ", ".join(f"batch {b}: {r:.2f}x" for b, r in zip(args.batches, ratios, strict=False)))
    if int8_ratios:
        print("int8 / float32: "
              + ", ".join(f"batch {b}: {r:.2f}x" for b, r in zip(args.batches, int8_ratios, strict=False)))


if __name__ == "__main__":
    main()
