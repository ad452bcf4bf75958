"""Pieces the model families share: masks, attention, rotary embeddings, KV cache, norms,
embeddings, activations and the HF initialisation of linear layers.

Everything here is pure: arrays in, arrays out. Layouts follow the Hugging Face
PyTorch classes so that weights map over without reshuffling and logits match.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

# A finite "minus infinity": a fully masked row (a left-padding query) then gets a
# uniform softmax instead of NaN, as in transformers.
_MASKED = -1e30


@struct.dataclass
class KVCache:
    """Keys and values of every layer for a fixed number of slots.

    Slots are filled left to right; `valid[b, s]` says slot s of row b holds a real
    token (left padding of a batched prompt does not), and `index` is the next slot
    to write. Positions (for RoPE or learned embeddings) are passed separately, so
    left-padded rows keep their true positions.
    """

    keys: tuple[jax.Array, ...]  # per layer [batch, slots, kv_heads, head_dim]
    values: tuple[jax.Array, ...]
    valid: jax.Array  # [batch, slots] bool
    index: jax.Array  # int32 scalar

    @classmethod
    def create(cls, num_layers, batch, slots, kv_heads, head_dim, dtype=jnp.float32):
        shape = (batch, slots, kv_heads, head_dim)
        return cls(
            keys=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            values=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            valid=jnp.zeros((batch, slots), bool),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def num_slots(self) -> int:
        return self.valid.shape[1]


def attention_mask(
    seq_len: int,
    *,
    padding_mask: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    causal: bool = True,
) -> jax.Array:
    """Boolean mask [batch or 1, 1, q, k]: which keys each query may attend to.

    `padding_mask` [batch, seq] is 1 for real tokens; `segment_ids` [batch, seq] keeps
    packed documents apart (a query sees only keys of its own segment).
    """
    mask = jnp.ones((1, 1, seq_len, seq_len), bool)
    if causal:
        mask = jnp.tril(mask)
    if padding_mask is not None:
        mask = mask & padding_mask.astype(bool)[:, None, None, :]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    return mask


def cached_attention_mask(cache: KVCache, num_new: int) -> jax.Array:
    """Mask [batch, 1, new, slots] for `num_new` tokens written at `cache.index`."""
    slot = jnp.arange(cache.num_slots)
    query_slot = cache.index + jnp.arange(num_new)
    causal = slot[None, :] <= query_slot[:, None]
    return causal[None, None] & cache.valid[:, None, None, :]


def update_cache_valid(cache: KVCache, new_valid: jax.Array) -> KVCache:
    """Mark the slots about to be written (before the layers run, so they see them)."""
    valid = jax.lax.dynamic_update_slice(cache.valid, new_valid.astype(bool), (0, cache.index))
    return cache.replace(valid=valid)


def run_with_cache(blocks, x, cache: KVCache, new_valid, run_block):
    """Run `blocks` over new tokens x [batch, n, dim] that enter the cache at `cache.index`.

    `run_block(block, x, mask, kv, index)` returns (x, (keys, values)) for one block.
    Returns the final hidden states and the cache advanced by n slots.
    """
    num_new = x.shape[1]
    if new_valid is None:
        new_valid = jnp.ones(x.shape[:2], bool)
    cache = update_cache_valid(cache, new_valid)
    mask = cached_attention_mask(cache, num_new)
    keys, values = [], []
    for i, block in enumerate(blocks):
        x, (k, v) = run_block(block, x, mask, (cache.keys[i], cache.values[i]), cache.index)
        keys.append(k)
        values.append(v)
    return x, cache.replace(keys=tuple(keys), values=tuple(values), index=cache.index + num_new)


def write_kv(cache_k, cache_v, k, v, index):
    """Write new keys/values [batch, new, kv_heads, head_dim] at slot `index`."""
    cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, index, 0, 0))
    cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, index, 0, 0))
    return cache_k, cache_v


def dot_product_attention(q, k, v, mask, scale: float | None = None):
    """Grouped-query attention. q [b, t, heads, d]; k, v [b, s, kv_heads, d]; mask [b|1, 1, t, s]."""
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    groups = heads // kv_heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    q = q.reshape(batch, q_len, kv_heads, groups, head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32) * scale
    scores = jnp.where(mask[:, :, None], scores, _MASKED)  # mask broadcast over kv heads/groups
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(batch, q_len, heads, head_dim)


# --- rotary position embeddings --------------------------------------------------------


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: dict | None) -> jax.Array:
    """Inverse frequencies [head_dim // 2], with the HF `rope_scaling` variants Llama uses."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        # Llama 3.1: leave high frequencies, divide low ones by `factor`, blend between.
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        return jnp.where(
            wavelen > old_len / low, inv_freq / factor, jnp.where(wavelen < old_len / high, inv_freq, blended)
        )
    raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: default, linear, llama3)")


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate x [b, t, heads, d] by positions [b, t], HF "rotate half" layout."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [b, t, d/2]
    cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated * sin).astype(x.dtype)


# --- positions --------------------------------------------------------------------------


def left_padded_positions(padding_mask: jax.Array) -> jax.Array:
    """Positions counting real tokens only, so left-padded rows start at 0 (as HF generate does)."""
    return jnp.maximum(jnp.cumsum(padding_mask, axis=-1) - 1, 0).astype(jnp.int32)


def default_positions(input_ids: jax.Array, padding_mask: jax.Array | None) -> jax.Array:
    """0, 1, ... per row, or `left_padded_positions` when a padding mask is given."""
    if padding_mask is None:
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    return left_padded_positions(padding_mask)


# --- norms, embeddings, activations, linear layers ---------------------------------------


class RMSNorm(nnx.Module):
    """Llama's RMSNorm: normalise in float32, scale in the input dtype."""

    def __init__(self, dim: int, eps: float, *, param_dtype=jnp.float32):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * normed.astype(x.dtype)


def layer_norm(dim: int, eps: float, *, param_dtype) -> nnx.LayerNorm:
    """LayerNorm as torch computes it (GPT-2, BERT): two-pass variance, not the faster E[x^2] - E[x]^2."""
    return nnx.LayerNorm(dim, epsilon=eps, param_dtype=param_dtype, use_fast_variance=False, rngs=nnx.Rngs(0))


def embed(rngs, num: int, dim: int, *, param_dtype) -> nnx.Embed:
    """nnx.Embed with HF's normal(0.02) init."""
    return nnx.Embed(num, dim, param_dtype=param_dtype, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)


def linear(rngs, in_dim, out_dim, *, bias: bool, param_dtype, std: float = 0.02) -> nnx.Linear:
    """nnx.Linear with HF's normal(0.02) init; the dtype of the computation follows the inputs."""
    return nnx.Linear(
        in_dim,
        out_dim,
        use_bias=bias,
        param_dtype=param_dtype,
        kernel_init=nnx.initializers.normal(std),
        rngs=rngs,
    )


# By their HF `activation_function` / `hidden_act` names: GPT-2's "gelu_new" is the tanh
# approximation, BERT's "gelu" the exact (erf) one.
ACTIVATIONS = {
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
