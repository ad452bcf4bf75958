"""Benchmark: a mixture-of-experts layer's grouped experts (`moe.grouped_matmul`: tiles of tokens sorted by
expert) against the dense form (every expert on every token, the unchosen weighted 0), forward and backward.

    .venv/bin/python scripts/bench_moe.py [--tokens 2048] [--dim 512] [--experts 16] [--top-k 2]
                                          [--expert-size 256] [--repeats 5]

Both sides run the same jitted value-and-gradient of sum(out ** 2) with respect to the experts' kernels,
on the same routing (softmax top-k of a random router); compile time is excluded and each figure is the
median of `--repeats` runs, the sides alternating. Tokens/s counts the tokens of one call. The last line
prints grouped over dense. The defaults are a Qwen3-MoE-like layer scaled to a CPU (128 experts, 8 per
token at full size: the larger experts / top-k, the more the dense form wastes).
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import moe
from jaxlm.models.moe import Experts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--expert-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ragged-dot", action="store_true",
                        help="also time the grouped form with jax.lax.ragged_dot as its matmul (XLA's lowering)")
    args = parser.parse_args(argv)

    experts = Experts(args.experts, args.dim, args.expert_size, ("gate_proj", "up_proj", "down_proj"),
                      rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(experts)
    x = jax.random.normal(jax.random.key(1), (args.tokens, args.dim))
    router = jax.random.normal(jax.random.key(2), (args.dim, args.experts))
    weights, chosen = jax.lax.top_k(jax.nn.softmax(x @ router, axis=-1), args.top_k)

    def step(how):
        def loss(state):
            return jnp.sum(getattr(nnx.merge(graphdef, state), how)(x, chosen, weights) ** 2)

        return jax.jit(jax.value_and_grad(loss))

    steps = {how: step(how) for how in ("grouped", "dense")}
    if args.ragged_dot:
        steps["ragged_dot"] = step("grouped")
    for how, fn in steps.items():
        start = time.perf_counter()
        if how == "ragged_dot":  # traced (once, here) with XLA's ragged_dot in place of the tiled matmul
            with mock.patch.object(moe, "grouped_matmul", jax.lax.ragged_dot):
                jax.block_until_ready(fn(state))
        else:
            jax.block_until_ready(fn(state))
        print(f"{how}: compiled and ran once in {time.perf_counter() - start:.2f}s")
    times: dict[str, list[float]] = {how: [] for how in steps}
    for _ in range(args.repeats):
        for how, fn in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(state))
            times[how].append(time.perf_counter() - start)
    rate = {how: args.tokens / statistics.median(t) for how, t in times.items()}
    for how in steps:
        print(f"{how}: {statistics.median(times[how]) * 1e3:.1f} ms per forward+backward, {rate[how]:,.0f} tokens/s")
    if args.ragged_dot:
        print(f"grouped / ragged_dot tokens/s: {rate['grouped'] / rate['ragged_dot']:.2f}x")
    print(f"grouped / dense tokens/s: {rate['grouped'] / rate['dense']:.2f}x "
          f"({args.experts} experts, top {args.top_k}, {args.tokens} tokens, dim {args.dim}, expert size "
          f"{args.expert_size}, {jax.devices()[0].platform})")


if __name__ == "__main__":
    main()
