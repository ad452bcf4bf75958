"""Flash-style causal blocks: `layers.causal_blocks`' query blocks with a backward that recomputes the probabilities.

    PYTHONPATH=. python scripts/experiments/exp_flash_blocks.py [--shapes 4x256 1x1024 1x2048] [--blocks 64 128]

Measured and not kept (scripts/experiments/cpu_speed.md, last section): each block of query rows [start, end)
attends keys [0, end) as `layers.causal_blocks` does, but the forward keeps only each row's log-sum-exp (and the
output) and the backward recomputes a block's probabilities from it (FlashAttention-2's backward over a whole
block of keys), instead of autodiff storing them; q is grouped as [batch, kv_heads, rows, group, head_dim] so
that GQA repeats no k or v. This script times forward + backward of 2 stacked attentions at SmolLM2-135M's
shape (9 query heads over 3 KV heads of 64, float32 or --bf16) against `layers.causal_blocks`, in one process,
interleaved, and prints the gradients' largest difference. To try it in the train step, patch
`jaxlm.models.layers.causal_blocks` with `causal_flash_blocks` (e.g. as a VARIANTS row of
scripts/bench_xla_flags.py).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp

from jaxlm.models import layers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exp_causal_blocks import interleaved  # noqa: E402


def causal_flash_blocks(q, k, v, mask: layers.Mask, scale: float, block: int = 128) -> jax.Array:
    """A drop-in for `layers.causal_blocks` (same arguments and shapes) with the recomputing backward."""
    t, s = q.shape[1], k.shape[1]
    if not mask.causal or mask.dense is not None or t != s or t <= block:
        return jax.nn.dot_product_attention(q, k, v, mask=mask.boolean(t, s), scale=scale, implementation="xla")
    bounds = tuple((start, min(start + block, t)) for start in range(0, t, block))
    masks = [mask.boolean(end - start, end, first=start) for start, end in bounds]
    return _attend(q, k, v, masks, bounds, scale)


def _scores(q_rows, keys, mask, scale):
    """Scores [b, n, rows, group, keys] in float32, masked the way jax.nn.dot_product_attention masks."""
    scores = jnp.einsum("bnrgd,bnkd->bnrgk", q_rows, keys, preferred_element_type=jnp.float32) * scale
    return jnp.where(mask[:, :, :, None, :], scores, layers._MASKED)


def _grouped(q, k, v):
    b, t, heads, d = q.shape
    kv_heads = k.shape[2]
    grouped = q.reshape(b, t, kv_heads, heads // kv_heads, d).transpose(0, 2, 1, 3, 4)  # [b, n, t, g, d]
    return grouped, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # k, v [b, n, t, d]


def _forward(q, k, v, masks, bounds, scale):
    grouped, keys, values = _grouped(q, k, v)
    outs, logsumexps = [], []
    for (start, end), mask in zip(bounds, masks, strict=True):
        scores = _scores(grouped[:, :, start:end], keys[:, :, :end], mask, scale)
        peak = jnp.max(scores, axis=-1, keepdims=True)
        weights = jnp.exp(scores - peak)
        total = jnp.sum(weights, axis=-1, keepdims=True)
        out = jnp.einsum("bnrgk,bnkd->bnrgd", weights.astype(v.dtype), values[:, :, :end],
                         preferred_element_type=jnp.float32) / total
        outs.append(out.astype(q.dtype))
        logsumexps.append(peak + jnp.log(total))
    out = jnp.concatenate(outs, axis=2)  # [b, n, t, g, d]
    b, t, heads, d = q.shape
    return out.transpose(0, 2, 1, 3, 4).reshape(b, t, heads, d), (grouped, keys, values, masks, out,
                                                                  jnp.concatenate(logsumexps, axis=2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attend(q, k, v, masks, bounds, scale):
    return _forward(q, k, v, masks, bounds, scale)[0]


def _backward(bounds, scale, residuals, d_out):
    grouped, keys, values, masks, out, logsumexp = residuals
    b, n, t, g, d = grouped.shape
    d_out = d_out.reshape(b, t, n, g, d).transpose(0, 2, 1, 3, 4)  # [b, n, t, g, d]
    # softmax's backward needs sum_k p dp = sum_d out * d_out per query row (FlashAttention-2's D)
    row_dot = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_keys = jnp.zeros(keys.shape, jnp.float32)
    d_values = jnp.zeros(values.shape, jnp.float32)
    d_rows = []
    for (start, end), mask in zip(bounds, masks, strict=True):
        q_rows, d_out_rows = grouped[:, :, start:end], d_out[:, :, start:end]
        probs = jnp.exp(_scores(q_rows, keys[:, :, :end], mask, scale) - logsumexp[:, :, start:end])
        d_values = d_values.at[:, :, :end].add(jnp.einsum("bnrgk,bnrgd->bnkd", probs.astype(d_out.dtype), d_out_rows,
                                                          preferred_element_type=jnp.float32))
        d_probs = jnp.einsum("bnrgd,bnkd->bnrgk", d_out_rows, values[:, :, :end], preferred_element_type=jnp.float32)
        d_scores = (probs * (d_probs - row_dot[:, :, start:end]) * scale).astype(grouped.dtype)
        d_rows.append(jnp.einsum("bnrgk,bnkd->bnrgd", d_scores, keys[:, :, :end], preferred_element_type=jnp.float32))
        d_keys = d_keys.at[:, :, :end].add(jnp.einsum("bnrgk,bnrgd->bnkd", d_scores, q_rows,
                                                      preferred_element_type=jnp.float32))
    d_q = jnp.concatenate(d_rows, axis=2).transpose(0, 2, 1, 3, 4).reshape(b, t, n * g, d).astype(grouped.dtype)
    return (d_q, d_keys.transpose(0, 2, 1, 3).astype(keys.dtype), d_values.transpose(0, 2, 1, 3).astype(values.dtype),
            None)  # the masks are booleans: no cotangent


_attend.defvjp(_forward, _backward)


def timed_step(batch: int, seq: int, attention, dtype):
    """A compiled gradient of 2 stacked causal attentions through `attention`, and its inputs."""
    mask = layers.Mask()

    def loss(q, k, v):
        x = q
        for _ in range(2):
            x = attention(x, k, v, mask, 0.125) + 0.5 * x
        return jnp.sum(x.astype(jnp.float32) ** 2)

    inputs = [jax.random.normal(jax.random.key(i), (batch, seq, heads, 64)).astype(dtype)
              for i, heads in enumerate((9, 3, 3))]
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*inputs).compile(), inputs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["4x256", "1x1024", "1x2048"], help="BATCHxSEQ")
    parser.add_argument("--blocks", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dtype = jnp.bfloat16 if args.bf16 else jnp.float32
    for shape in args.shapes:
        batch, seq = map(int, shape.split("x"))
        steps = {"causal_blocks": timed_step(batch, seq, layers.causal_blocks, dtype)}
        for block in (b for b in args.blocks if b < seq):
            flash = functools.partial(causal_flash_blocks, block=block)
            steps[f"flash {block}"] = timed_step(batch, seq, flash, dtype)
        for name, (ms, ratio, diff) in interleaved(steps, "causal_blocks", args.repeats, 2).items():
            print(f"{shape} {name:14s} {ms:8.1f} ms a layer, {ratio:.2f}x causal_blocks; "
                  f"gradients differ by {diff:.1e} of their largest", flush=True)

if __name__ == "__main__":
    main()
