"""Where a decoding step's time goes: the memory-bandwidth ceiling, then what the decode program does a step.

    PYTHONPATH=. python scripts/experiments/exp_decode_profile.py [--model X.gguf] [--int8] [--batch 1]

1. The ceiling: batch-1 decoding reads every weight once per token, so tokens/s <= bandwidth / bytes read
   per token. Bandwidth is measured here, in this process, three ways over 1 GiB (a jitted sum, a jitted
   f32 matrix-vector product, torch's matrix-vector product: the fastest is the ceiling's).
2. The decode program: its loop body's ops by kind (dots XLA emits itself, YNNPACK fusions, loop fusions),
   and any copy or transpose of >= 1M elements per step (a weight or the KV cache copied per token).
   XLA:CPU's trace events do not time its own kernels; for time per kernel, run this under
   `perf record -F 499 -p PID` after the warm-up and `perf report --sort dso,sym` (kernels XLA compiled
   show as [JIT], YNNPACK's as ynn::...).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import time

import jax
import jax.numpy as jnp
from flax import nnx

import jaxlm
from jaxlm import assets
from jaxlm.sampling import loop


def best_seconds(fn, *args, repeats=5):
    fn(*args).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(time.perf_counter() - start)
    return min(times)


def bandwidth() -> dict[str, float]:
    """GB/s read from memory by three 1 GiB reads (the best of 5 runs each)."""
    import torch

    size = 1 << 30
    flat = jnp.ones((size // 4,), jnp.float32)
    rates = {"jax sum": size / best_seconds(jax.jit(jnp.sum), flat) / 1e9}
    side = 16384
    matrix, vector = flat.reshape(side, side), jnp.ones((1, side), jnp.float32)
    rates["jax matvec"] = size / best_seconds(jax.jit(jnp.matmul), vector, matrix) / 1e9
    del flat, matrix
    tm, tv = torch.ones(side, side), torch.ones(side)

    class Torch:  # best_seconds' interface
        def __init__(self, out):
            self.out = out

        def block_until_ready(self):
            return self.out

    with torch.inference_mode():
        rates["torch matvec"] = size / best_seconds(lambda: Torch(tm @ tv)) / 1e9
    return rates


def bytes_per_token(model, slots: int, batch: int) -> tuple[int, int]:
    """(weight bytes, KV-cache bytes) one decoding step reads: every parameter, except a token embedding
    table that only gives lookups (untied, or tied with an int8 copy for the logits)."""
    total = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
    table = model.embed_tokens.embedding[...]
    output_is_table = model.config.tie_word_embeddings and not hasattr(model.embed_tokens, "matrix")
    weights = total - (0 if output_is_table else table.nbytes)
    cfg = model.config
    cache = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * slots * 4 * batch
    return weights, cache


def audit(model, tokenizer, batch: int, new_tokens: int):
    """Time one `generate` call, then list what the decode program's loop body does each step, by kind."""
    prompts = ["What is the capital of France?"] * batch
    jaxlm.generate(model, tokenizer, prompts, max_new_tokens=new_tokens, chat=True, stop_at_eos=False)
    result = jaxlm.generate(model, tokenizer, prompts, max_new_tokens=new_tokens, chat=True, stop_at_eos=False)
    print(f"decode: {result.decode_seconds * 1000 / (new_tokens - 1):.2f} ms a step (wall), "
          f"{batch * (new_tokens - 1) / result.decode_seconds:.1f} new tokens/s")
    decode = next(exe for (jitted, *_), exe in loop._executables.items() if jitted is loop._decode_jit)
    hlo = decode.as_text()
    body_name = re.search(r"while\(.*?body=%?([\w.\-]+)", hlo).group(1)
    body = re.search(rf"^%?{re.escape(body_name)} .*?\{{\n(.*?)\n\}}", hlo, re.M | re.S).group(1)
    kinds = collections.Counter(_kind(line) for line in body.splitlines() if " = " in line)
    kinds.pop("get-tuple-element", None)
    print("ops in the decode loop body, by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
    big = [line.strip()[:200] for line in body.splitlines()
           if re.search(r"= \S+ (copy|transpose)\(", line) and _elements(line) >= 1 << 20]
    print(f"copies/transposes of >= 1M elements per step: {len(big)}")
    for line in big:
        print(f"  {line}")


def _kind(line: str) -> str:
    """An op's kind: dots XLA emits itself, YNNPACK's fusions (dots at batch > 1, attention), XLA's loop
    fusions named by what they fuse (a dynamic-update-slice fusion writes the KV cache in place)."""
    match = re.search(r"%([\w\-]+?)(?:\.\d+)? = \S+ ([\w\-]+)\(", line)
    if not match:
        return "?"
    name, op = match.groups()
    if op == "fusion" and "__ynn_fusion" in line:
        return "ynn fusion"
    return f"fusion {name}" if op == "fusion" else op


def _elements(line: str) -> int:
    shape = re.search(r"= \w+\[([\d,]*)\]", line)
    if not shape or not shape.group(1):
        return 0
    n = 1
    for d in shape.group(1).split(","):
        n *= int(d)
    return n


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=assets.smollm2_gguf())
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--no-bandwidth", action="store_true")
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.1f}")
    if not args.no_bandwidth:
        rates = bandwidth()
        print("bandwidth, GB/s: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()))
    model, tokenizer = jaxlm.load_pretrained(args.model, quantize="int8" if args.int8 else None)
    weights, cache = bytes_per_token(model, 48 + args.new_tokens, args.batch)
    print(f"bytes read a decoding step: weights {weights / 1e6:.0f} MB, KV cache <= {cache / 1e6:.1f} MB")
    if not args.no_bandwidth:
        best = max(rates.values())
        print(f"ceiling at batch {args.batch}: {best * 1e9 / (weights + cache) * args.batch:.0f} new tokens/s "
              f"({best:.1f} GB/s)")
    audit(model, tokenizer, args.batch, args.new_tokens)


if __name__ == "__main__":
    main()
