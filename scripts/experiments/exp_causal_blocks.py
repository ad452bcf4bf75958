"""Causal attention by blocks of query rows (`jaxlm.models.layers.causal_blocks`) against the whole scores.

    PYTHONPATH=. python scripts/experiments/exp_causal_blocks.py [--seqs 256 512 1024] [--blocks 64 128 256]

SmolLM2-135M's attention shape (9 query heads over 3 KV heads of 64, batch 4, float32), forward and
backward (gradients of q, k, v) through `--layers` stacked attentions, compiled once per block size and run
interleaved in this process: the median milliseconds per layer for the whole [seq, seq] scores and for each
block size, and the largest difference of the gradients from the whole scores' (rounding only).
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import jax
import jax.numpy as jnp

from jaxlm.models import layers


def step(seq: int, block: int, layer_count: int):
    """A jitted gradient of `layer_count` causal attentions, traced with `query_block` giving `block`."""
    mask = layers.Mask()

    def loss(q, k, v):
        x = q
        for _ in range(layer_count):
            x = layers.attention(x, k, v, mask)[0] + 0.5 * x
        return jnp.sum(x**2)

    with mock.patch.object(layers, "query_block", lambda length: block):
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        inputs = [jax.random.normal(jax.random.key(i), (4, seq, heads, 64)) for i, heads in enumerate((9, 3, 3))]
        return grad.lower(*inputs).compile(), inputs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seqs", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--blocks", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for seq in args.seqs:
        names = ["whole", *(f"block {b}" for b in args.blocks if b < seq)]
        sizes = [seq, *(b for b in args.blocks if b < seq)]
        compiled = {name: step(seq, size, args.layers) for name, size in zip(names, sizes, strict=True)}
        for name, (ms, ratio, diff) in interleaved(compiled, "whole", args.repeats, args.layers).items():
            print(f"seq {seq:5d} {name:10s} {ms:8.2f} ms a layer (forward + backward), {ratio:.2f}x whole; "
                  f"gradients differ by {diff:.1e} of their largest", flush=True)


def interleaved(compiled: dict, baseline: str, repeats: int, layer_count: int) -> dict[str, tuple[float, float, float]]:
    """name -> (median ms a layer, over the baseline's, the gradients' largest difference from the baseline's
    relative to their largest) for compiled gradient steps {name: (step, inputs)}, run in turn `repeats` times."""
    want = compiled[baseline][0](*compiled[baseline][1])
    times = {name: [] for name in compiled}
    for _ in range(repeats):
        for name, (fn, inputs) in compiled.items():  # interleaved: load from other processes hits every one alike
            began = time.perf_counter()
            jax.block_until_ready(fn(*inputs))
            times[name].append((time.perf_counter() - began) / layer_count * 1000)
    base = statistics.median(times[baseline])
    found = {}
    for name, (fn, inputs) in compiled.items():
        got = [x.astype(jnp.float32) for x in fn(*inputs)]
        diff = max(float(jnp.max(jnp.abs(a - b.astype(jnp.float32))) / jnp.max(jnp.abs(b.astype(jnp.float32))))
                   for a, b in zip(got, want, strict=True))
        found[name] = statistics.median(times[name]), statistics.median(times[name]) / base, diff
    return found

if __name__ == "__main__":
    main()
