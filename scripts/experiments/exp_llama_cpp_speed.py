"""llama.cpp's generation speed on GGUF files, for the ratios of issue 31, in an interpreter that has llama_cpp.

    python scripts/experiments/exp_llama_cpp_speed.py model-f16.gguf model-q8_0.gguf [--threads 1] [--new-tokens 32]

Needs only llama-cpp-python, so it runs in its own virtual environment when llama_cpp does not install beside
jaxlm (write the files first: `jaxlm.export_pretrained(model, "m-q8_0.gguf", tokenizer, gguf_type="q8_0")`).
Greedy, batch 1, the chat prompt scripts/bench_generate.py uses first, prefill included in the time as
bench_generate counts it; runs alternate between the files, each figure the median of --repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import llama_cpp  # pyright: ignore[reportMissingImports]  # its own environment

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def tokens_per_second(llm, new_tokens: int) -> float:
    prompt = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    llm.reset()  # each run prefills
    start, count = time.perf_counter(), 0
    for _ in llm.generate(prompt, top_k=1, temp=0.0, reset=False):
        count += 1  # noqa: SIM113  the count outlives the loop
        if count == new_tokens:
            break
    return new_tokens / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    llms = {path: llama_cpp.Llama(path, n_ctx=512, n_threads=args.threads, n_batch=512, verbose=False)
            for path in args.files}
    for llm in llms.values():
        tokens_per_second(llm, 4)  # warm-up
    rates = {path: [] for path in llms}
    for _ in range(args.repeats):
        for path, llm in llms.items():
            rates[path].append(tokens_per_second(llm, args.new_tokens))
    for path, measured in rates.items():
        print(f"llama.cpp {os.path.basename(path)}: {statistics.median(measured):.1f} new tokens/s "
              f"({args.threads} threads, {args.new_tokens} new tokens, prefill included)")
    print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
