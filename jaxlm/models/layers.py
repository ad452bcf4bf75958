"""Pieces the model families share: the attention seam and its masks, rotary embeddings, norms,
embeddings, activations and the HF initialisation of linear layers.

Everything here is pure: arrays in, arrays out. Layouts follow the Hugging Face
PyTorch classes so that weights map over without reshuffling and logits match.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxlm.models.kv_cache import KVCache, LayerCache

ATTENTION = ("auto", "xla", "cudnn")  # model.attention


@struct.dataclass
class Mask:
    """What each query may attend to, described the way attention kernels take it; built once per forward.

    Training and scoring give `causal` plus at most one of: `lengths` [batch] (each row is one
    sequence from position 0, then padding: what cuDNN takes), `segment_ids` [batch, seq] (packed
    documents, 0 = padding) or `padding` [batch, seq] (1 = real token, anywhere). With segment ids
    or padding a query sees the keys of its own segment (padding counts as one more segment, so no
    row is ever fully masked). Decoding over a KV cache gives `dense` [batch, 1, new, slots]
    (`KVCache.admit`) and `offset`, the slot of its first query.
    `implementation` picks the kernel (see `attention`).

    `window` adds a sliding window, transformers' rule: the query at index q sees the key at index k
    only when q - window < k, where an index is the place in the padded row (or the cache slot), as
    transformers counts with left padding. A Python int is static and fused kernels take it; an array
    (a per-layer window scanned with stacked layers) is built into the boolean mask.
    """

    lengths: jax.Array | None = None
    segment_ids: jax.Array | None = None
    padding: jax.Array | None = None
    dense: jax.Array | None = None
    window: jax.Array | int | None = None
    offset: jax.Array | int = 0
    causal: bool = struct.field(pytree_node=False, default=True)
    implementation: str = struct.field(pytree_node=False, default="xla")

    def ids(self) -> jax.Array | None:
        """One id per token such that query and key must have equal ids (None: no such constraint)."""
        if self.padding is None:
            return self.segment_ids
        real = self.padding.astype(jnp.int32)
        return real if self.segment_ids is None else self.segment_ids * real

    def boolean(self, q_len: int, k_len: int, first: int = 0) -> jax.Array:
        """The mask as booleans [batch or 1, 1, q, k]: the rows of queries first .. first + q_len - 1."""
        mask = self.dense[:, :, first:first + q_len] if self.dense is not None else self._undecoded(q_len, k_len, first)
        if self.window is not None:
            query = self.offset + first + jnp.arange(q_len)
            mask = mask & (jnp.arange(k_len)[None, :] > query[:, None] - self.window)
        return mask

    def _undecoded(self, q_len: int, k_len: int, first: int) -> jax.Array:
        query, key = first + jnp.arange(q_len), jnp.arange(k_len)
        mask = jnp.ones((1, 1, q_len, k_len), bool)
        if self.causal:
            mask = mask & (key[None, :] <= query[:, None])
        if self.lengths is not None:  # padding keys are for padding queries only, as with segment ids
            real = key[None, :] < self.lengths[:, None]
            mask = mask & (real[:, None, first:first + q_len, None] == real[:, None, None, :])
        ids = self.ids()
        if ids is not None:
            mask = mask & (ids[:, None, first:first + q_len, None] == ids[:, None, None, :k_len])
        return mask

    def real_tokens(self, batch: int, seq: int) -> jax.Array | None:
        """[batch, seq] bool: which tokens are real rather than padding (None: all are, as far as it says)."""
        if self.lengths is not None:
            return jnp.arange(seq)[None, :] < self.lengths[:, None]
        ids = self.ids()
        return None if ids is None else jnp.broadcast_to(ids != 0, (batch, seq))

    @property
    def kernel_ready(self) -> bool:
        """Whether a fused kernel can take this mask as it is (causal, lengths, a static window)."""
        return (self.dense is None and self.segment_ids is None and self.padding is None
                and (self.window is None or isinstance(self.window, int)))


def attention(q, k, v, mask: Mask, *, scale: float | None = None, softcap: float | None = None,
              cache: LayerCache | None = None) -> tuple[jax.Array, LayerCache | None]:
    """The one attention of every family: q [b, t, heads, d]; k, v [b, s, kv_heads, d] (GQA when fewer).

    Returns (output [b, t, heads, d], cache). Without a cache, `mask.implementation` "xla" runs
    `jax.nn.dot_product_attention`'s XLA path on a boolean mask (softmax in float32; causal masks a block
    of query rows at a time, see `causal_blocks`), and "cudnn"
    runs cuDNN flash attention through the same function for bf16/fp16 inputs whose mask it takes
    (causal, lengths, a static window); packed rows and arbitrary padding take the XLA path, as
    `resolve_attention` announces when it sets the implementation up. With a cache (generation), k
    and v are written into it first and the queries attend over all its slots: the same arithmetic
    as the XLA path, on the cache's layout (see kv_cache.KVCache), with `mask` from `KVCache.admit`.

    `softcap` (Gemma 2) bounds the scores by softcap * tanh(scores / softcap) before the mask, which
    jax.nn.dot_product_attention cannot do: the cache-layout path computes the scores itself then.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if cache is not None:
        cache = cache.write(k, v)
        return _attention_over_cache(q, *cache.read(), mask, scale, softcap), cache
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    if softcap is not None:
        b, s, kv_heads, d = k.shape
        keys, values = (x.swapaxes(1, 2).reshape(b * kv_heads, s, d) for x in (k, v))  # the cache's layout
        return _attention_over_cache(q, keys, values, mask, scale, softcap), None
    if mask.implementation == "cudnn" and mask.kernel_ready and q.dtype in (jnp.bfloat16, jnp.float16):
        return kernel_attention(q, k, v, mask, scale=scale, implementation="cudnn"), None
    return causal_blocks(q, k, v, mask, scale), None


def query_block(length: int) -> int:
    """Query rows per block of causal self-attention (`causal_blocks`): 128 up to 512 tokens, 256 beyond.
    Measured on a 2-core CPU, forward + backward against the whole [seq, seq] scores: 0.75x the time at 256
    tokens (2 blocks), 0.62x at 512 (4), 0.49x at 1024 (4 of 256), 0.41x at 2048 (8 of 256); blocks of 512
    save less, and smaller ones lose to per-op overhead (scripts/experiments/exp_causal_blocks.py)."""
    return 128 if length <= 512 else 256


def causal_blocks(q, k, v, mask: Mask, scale: float) -> jax.Array:
    """jax.nn.dot_product_attention's XLA path on a boolean mask, one block of query rows at a time.

    Under a causal mask the queries of rows [start, end) see no key at or past `end`, so each block
    takes only keys [0, end): the scores above the diagonal's blocks, nearly half of them, are neither
    computed nor stored, forward and backward. The arithmetic of every kept score is unchanged: a
    query's softmax runs over the same allowed keys (padding and segments only remove more of them).
    """
    t, s = q.shape[1], k.shape[1]
    block = query_block(t)
    if not mask.causal or mask.dense is not None or t != s or t <= block:  # a dense mask says itself what it allows
        return jax.nn.dot_product_attention(q, k, v, mask=mask.boolean(t, s), scale=scale, implementation="xla")
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        outs.append(jax.nn.dot_product_attention(q[:, start:end], k[:, :end], v[:, :end], scale=scale,
                                                 mask=mask.boolean(end - start, end, first=start),
                                                 implementation="xla"))
    return jnp.concatenate(outs, axis=1)


def _attention_over_cache(q, keys, values, mask: Mask, scale: float, softcap: float | None = None) -> jax.Array:
    """q [b, t, heads, d] over keys, values [b * kv_heads, slots, d]: both matmuls read the cache where it lies."""
    b, t, heads, d = q.shape
    kv_heads = keys.shape[0] // b
    group = heads // kv_heads
    # [b * kv, group * t, d]: the queries that share one KV head, as the rows of one matmul
    q = q.reshape(b, t, kv_heads, group, d).transpose(0, 2, 3, 1, 4).reshape(b * kv_heads, group * t, d)
    scores = jnp.einsum("nqd,nsd->nqs", q, keys.astype(q.dtype), preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    allowed = jnp.tile(mask.boolean(t, keys.shape[1]), (1, 1, group, 1))  # [b or 1, 1, group * t, slots]
    allowed = jnp.broadcast_to(allowed, (b, kv_heads, *allowed.shape[2:])).reshape(scores.shape)
    scores = jnp.where(allowed, scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = matmul(probs, values.astype(q.dtype))  # [b * kv, group * t, d]
    return out.reshape(b, kv_heads, group, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, heads, d)


# What jax.nn.dot_product_attention gives masked scores: finite, so a row with no allowed slot
# (batch padding) softmaxes to uniform weights instead of NaN.
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def kernel_attention(q, k, v, mask: Mask, *, scale: float, implementation: str) -> jax.Array:
    """A fused kernel's call: causal or not, with per-row sequence lengths when rows are padded, and
    a static sliding window (`Mask.window`) as the kernel's (window - 1 keys back, none ahead).

    jax.nn.dot_product_attention's cuDNN path takes padding only as lengths, and packed documents
    not at all (no segment ids; a mask becomes a bias whose gradient cuDNN computes only for batch
    1). `implementation="xla"` runs the same call on XLA (how the tests check it on a CPU).
    """
    lengths = {} if mask.lengths is None else dict(query_seq_lengths=mask.lengths, key_value_seq_lengths=mask.lengths)
    window = None if mask.window is None else (int(mask.window) - 1, 0)
    return jax.nn.dot_product_attention(  # pyright: ignore[reportCallIssue, reportArgumentType]  see below
        q, k, v, scale=scale, is_causal=mask.causal, local_window_size=window,
        implementation=implementation,  # pyright: ignore[reportArgumentType]  "xla" or "cudnn", checked by configure
        **lengths)  # pyright: ignore[reportArgumentType]  two length arrays or nothing: the stubs take any key


def fan_out(projections, x) -> list[jax.Array]:
    """[p(x) for p in projections], for linear layers that read the same x (q/k/v; gate/up).

    LoRA layers among them (`models.lora.LoRALinear`) share one x @ [A_1 | A_2 | ...]: one
    matmul reads x for all their adapters, instead of one thin matmul each (forward and backward).
    """
    adapted = [p for p in projections if hasattr(p, "lora_a")]
    if len(adapted) < 2:
        return [p(x) for p in projections]
    a = jnp.concatenate([p.lora_a[...].astype(x.dtype) for p in adapted], axis=-1)
    ranks = [p.lora_a.get_value().shape[-1] for p in adapted]
    parts = jnp.split(thin_dense(x, a), list(itertools.accumulate(ranks))[:-1], axis=-1)
    down = dict(zip(map(id, adapted), parts, strict=False))
    return [p(x, down=down[id(p)]) if id(p) in down else p(x) for p in projections]


def resolve_attention(requested: str, *, compute_dtype, head_dim: int, packed: bool = False,
                      softcap: float | None = None, layer_windows: bool = False, platform: str | None = None):
    """(implementation, note): `auto` means cuDNN on an NVIDIA GPU and XLA elsewhere; a request the
    kernel cannot serve falls back to XLA, and `note` says why (for the caller to log once).
    `packed`: training rows hold several documents (segment ids), which only XLA attention takes.
    `softcap`: the model caps its attention scores (Gemma 2), which no fused kernel here does.
    `layer_windows`: its layers' windows differ (Gemma's `layer_types`), so each layer holds its window as
    data (`LayerConstant`), which the boolean mask of XLA attention takes and a fused kernel does not."""
    if requested not in ATTENTION:
        raise ValueError(f"model.attention={requested!r} is not one of {', '.join(ATTENTION)}")
    platform = platform or jax.devices()[0].platform
    if requested == "xla" or (requested == "auto" and platform != "gpu"):
        return "xla", None
    if platform != "gpu":
        return "xla", f"model.attention=cudnn needs an NVIDIA GPU (this is {platform}): using XLA attention"
    if jnp.dtype(compute_dtype) not in (jnp.bfloat16, jnp.float16):
        return "xla", (f"cuDNN flash attention takes bf16/fp16, compute dtype is {jnp.dtype(compute_dtype).name}: "
                       "using XLA attention (set train.compute_dtype=bfloat16)")
    if head_dim % 8 or head_dim > 256:
        return "xla", f"cuDNN flash attention needs head_dim <= 256 and a multiple of 8, not {head_dim}: using XLA"
    if softcap is not None:
        return "xla", (f"attention-logit soft-capping ({softcap}) is not in cuDNN flash attention: XLA attention, "
                       "which keeps [batch, heads, seq, seq] scores")
    if layer_windows:
        return "xla", ("sliding-window and global layers hold their windows as data (one scanned layer for both), "
                       "which only XLA attention's mask takes: XLA attention")
    if packed:
        return "xla", ("packed rows (data.pack=true) need segment ids, which jax.nn.dot_product_attention's cuDNN "
                       "path does not take: XLA attention, which keeps [batch, heads, seq, seq] scores; set "
                       "data.pack=false for cuDNN flash attention")
    return "cudnn", "cuDNN flash attention for training; decoding over the KV cache uses XLA attention"


# --- rotary position embeddings --------------------------------------------------------


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: dict | None) -> jax.Array:
    """Inverse frequencies [head_dim // 2], with the HF `rope_scaling` variants Llama uses.

    `head_dim` is the number of dims that rotate (fewer than a head's with a partial rotary factor)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    scaling = scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
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


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array, scale: float = 1.0) -> jax.Array:
    """Rotate x [b, t, heads, d] by positions [b, t], HF "rotate half" layout.

    Only the first 2 * len(inv_freq) dims of each head rotate; the rest pass through unchanged (a
    `partial_rotary_factor` below 1). `scale` multiplies cos and sin, as HF's `attention_scaling` does
    (longrope's attention factor), so it scales the rotated dims only."""
    rotary = 2 * inv_freq.shape[-1]
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [b, t, rotary/2]
    cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :] * scale
    sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :] * scale
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32[..., :rotary], 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return jnp.concatenate([x32[..., :rotary] * cos + rotated * sin, x32[..., rotary:]], -1).astype(x.dtype)


# --- positions --------------------------------------------------------------------------


def left_padded_positions(padding_mask: jax.Array) -> jax.Array:
    """Positions counting real tokens only, so left-padded rows start at 0 (as HF generate does)."""
    return jnp.maximum(jnp.cumsum(padding_mask, axis=-1) - 1, 0).astype(jnp.int32)


def default_positions(input_ids: jax.Array, padding_mask: jax.Array | None) -> jax.Array:
    """0, 1, ... per row, or `left_padded_positions` when a padding mask is given."""
    if padding_mask is None:
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    return left_padded_positions(padding_mask)


def causal_inputs(input_ids, attention_mask, positions, segment_ids, lengths, cache: KVCache | None,
                  implementation: str) -> tuple[jax.Array, Mask, KVCache | None]:
    """(positions, mask, cache) for a causal LM's forward pass (`models.contract.CausalLM.__call__`).

    Without a cache: positions default from the padding, and the mask describes the rows as given.
    With one: the new tokens are admitted into the cache (`KVCache.admit`) and the mask says which
    of its slots each may see; their positions must be given (left-padded rows keep their own)."""
    if cache is None:
        if positions is None:
            positions = default_positions(input_ids, attention_mask)
        mask = Mask(lengths=lengths, segment_ids=segment_ids, padding=attention_mask, implementation=implementation)
        return positions, mask, None
    if positions is None:
        raise ValueError("a forward pass over a KV cache needs the new tokens' positions")
    if segment_ids is not None or lengths is not None:
        raise ValueError("a forward pass over a KV cache takes attention_mask, not segment_ids or lengths")
    cache, allowed = cache.admit(attention_mask, input_ids.shape[1])
    return positions, Mask(dense=allowed, offset=cache.index), cache


# --- norms, embeddings, activations, linear layers ---------------------------------------


class LayerConstant(nnx.Variable):
    """A fact of one decoder layer held as data, not a parameter (never trained or exported): what
    differs between layers (Gemma's window and RoPE frequencies) then stacks with the parameters,
    so such layers still share one compiled layer under `scan.stack`."""


class RMSNorm(nnx.Module):
    """Llama's RMSNorm: normalise in float32, scale in the input dtype.

    `offset` is Gemma's form: the weight is stored as an offset from 1 (it scales by 1 + weight) and
    scales in float32 before the cast, as transformers' Gemma2RMSNorm/Gemma3RMSNorm do."""

    def __init__(self, dim: int, eps: float, *, param_dtype=jnp.float32, offset: bool = False):
        self.weight = nnx.Param((jnp.zeros if offset else jnp.ones)((dim,), param_dtype))
        self.eps, self.offset = eps, offset

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.offset:
            return (normed * (1.0 + self.weight[...].astype(jnp.float32))).astype(x.dtype)
        return self.weight[...] * normed.astype(x.dtype)


def layer_norm(dim: int, eps: float, *, param_dtype) -> nnx.LayerNorm:
    """LayerNorm as torch computes it (GPT-2, BERT): two-pass variance, not the faster E[x^2] - E[x]^2."""
    return nnx.LayerNorm(dim, epsilon=eps, param_dtype=param_dtype, use_fast_variance=False, rngs=nnx.Rngs(0))


class Embed(nnx.Module):
    """An embedding table whose lookups come out in the table's dtype.

    `nnx.Embed` fixes its output dtype when it is built (float32 master weights), so the
    bfloat16 copy the train step makes was cast back to float32 and every later matmul ran
    in float32. Here the activations follow the weights: bf16 weights, bf16 activations.
    """

    def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32, std: float = 0.02):
        self.embedding = nnx.Param(nnx.initializers.normal(std)(rngs.params(), (num, dim), param_dtype))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the table (a tied LM head), in the dtype of x."""
        return dense(x, self.embedding[...].astype(x.dtype).T)


def embed(rngs, num: int, dim: int, *, param_dtype) -> Embed:
    """An embedding table with HF's normal(0.02) init."""
    return Embed(num, dim, rngs=rngs, param_dtype=param_dtype)


def _bf16_on_cpu(dtype) -> bool:
    return jnp.dtype(dtype) == jnp.bfloat16 and jax.default_backend() == "cpu"


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b in a's dtype. On the CPU a bfloat16 product is asked for in float32 and rounded once.

    XLA:CPU has no dot with a bfloat16 result: it converts both operands to float32 and multiplies at
    float32 speed, while bf16 x bf16 -> float32 runs natively (AVX512-BF16): [1024, 576] x [576, 1536]
    measured 202 vs 431 GFLOP/s on the 2-core Zen 4 CI machine, and bf16 training ran slower than float32
    until this (scripts/experiments/cpu_speed.md). Both accumulate in float32 and round the result once.
    """
    if _bf16_on_cpu(a.dtype) and b.dtype == a.dtype:
        return jnp.matmul(a, b, preferred_element_type=jnp.float32).astype(a.dtype)
    return a @ b


def dense(x: jax.Array, kernel: jax.Array, thin: bool = False) -> jax.Array:
    """x @ kernel (x [..., in], kernel [in, out]) whose kernel gradient is x^T @ dy with x^T transposed on its
    own first, each product a `matmul`: every linear layer's matmul (`dense_dot`), a tied LM head's logits
    (`Embed.attend`) and LoRA's (`models.lora`).

    Autodiff's kernel gradient contracts x and dy over the tokens, and XLA:CPU then copies dy into a transposed
    layout inside the elementwise fusion that produces it: slow strided writes (~60 MB/s), a quarter of the op
    time of SmolLM2-135M 4x256's train step, in full fine-tuning and in LoRA alike (one [tokens, out] copy per
    adapter for a [rank, out] gradient; scripts/experiments/profile_train_step.py). Measured in one process,
    steps interleaved (scripts/bench_xla_flags.py --settings autodiff,default): full step 0.80x wall / 0.86x CPU
    seconds, LoRA r16 0.65x / 0.74x, the same loss and gradients (tests/test_gradients.py, tests/test_lora.py).

    `thin`: the kernel has few output columns (see `thin_dense`): the kernel gradient stays the plain contraction
    over the tokens."""
    return _dense(x, kernel, thin)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense(x, kernel, thin):
    return matmul(x, kernel)


def thin_dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x @ kernel for a kernel of few output columns (LoRA's down-projection A [in, rank]), whose gradient
    contracts x with the thin [tokens, rank] cotangent, which XLA transposes: transposing x instead (`dense`)
    made a LoRA step 7 % slower (scripts/experiments/cpu_speed.md). Autodiff's own, except in bf16 on the CPU,
    where `dense(thin=True)` keeps each product bf16 x bf16 -> float32 (see `matmul`)."""
    return dense(x, kernel, True) if _bf16_on_cpu(x.dtype) else x @ kernel


def _dense_forward(x, kernel, thin):
    return matmul(x, kernel), (x, kernel)


def _dense_backward(thin, residuals, dy):
    x, kernel = residuals
    dx = matmul(dy, kernel.T.astype(dy.dtype))
    rows, dy_rows = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    if thin:  # the plain contraction over the tokens: XLA folds this transpose into the dot
        return dx, matmul(rows.T, dy_rows).astype(kernel.dtype)
    # [in, tokens], materialised: the barrier keeps XLA from folding this transpose back into the dot. It holds
    # the flat copy: with the [in, tokens] array itself behind it, XLA:CPU ran a bf16 dot in float32 (converted
    # operands, 193 vs 367 GFLOP/s for [576, 1024] x [1024, 1536]; float32 the same either way)
    x_t = jax.lax.optimization_barrier(rows.T.reshape(-1)).reshape(rows.shape[::-1])
    return dx, matmul(x_t, dy_rows).astype(kernel.dtype)


_dense.defvjp(_dense_forward, _dense_backward)


def dense_dot(x, kernel, dimension_numbers, precision=None, **kwargs):
    """The `dot_general` of every `linear` layer: `dense` for nnx.Linear's x @ kernel; any other contraction
    (or a precision, output type or sharding) is jax.lax.dot_general's."""
    if dimension_numbers != (((x.ndim - 1,), (0,)), ((), ())) or precision is not None or \
            any(v is not None for v in kwargs.values()):
        return jax.lax.dot_general(x, kernel, dimension_numbers, precision=precision, **kwargs)
    return dense(x, kernel)


def linear(rngs, in_dim, out_dim, *, bias: bool, param_dtype, std: float = 0.02) -> nnx.Linear:
    """nnx.Linear with HF's normal(0.02) init; the dtype of the computation follows the inputs."""
    return nnx.Linear(
        in_dim,
        out_dim,
        use_bias=bias,
        param_dtype=param_dtype,
        kernel_init=nnx.initializers.normal(std),
        rngs=rngs,
        dot_general=dense_dot,
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
