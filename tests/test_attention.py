"""The attention seam: every path agrees with PyTorch's scaled_dot_product_attention on the tokens that count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxlm.models import layers
from jaxlm.models.kv_cache import LayerCache

B, T, HEADS, KV_HEADS, D = 3, 12, 4, 2, 16  # grouped-query attention: 2 query heads per KV head
PACKED = np.array([[1] * 5 + [2] * 4 + [0] * 3,  # two documents, then padding
                   [1] * 12,  # one document, no padding
                   [1] * 3 + [2] * 3 + [3] * 6], np.int32)
ONE_DOCUMENT = np.array([[1] * 9 + [0] * 3, [1] * 12, [1] * 4 + [0] * 8], np.int32)  # right padding only


def qkv(seed=0):
    rng = np.random.RandomState(seed)
    return (rng.randn(B, T, HEADS, D).astype(np.float32), rng.randn(B, T, KV_HEADS, D).astype(np.float32),
            rng.randn(B, T, KV_HEADS, D).astype(np.float32))


def reference(q, k, v, allowed):
    """torch SDPA with the boolean mask [b, t, s] (True = may attend), KV heads repeated for GQA."""
    group = HEADS // KV_HEADS
    tq, tk, tv = (torch.tensor(x).transpose(1, 2) for x in (q, k, v))
    tk, tv = tk.repeat_interleave(group, dim=1), tv.repeat_interleave(group, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.tensor(allowed)[:, None])
    return out.transpose(1, 2).numpy()


def allowed_by(ids, causal=True, window=None):
    """transformers' rule for a sliding window: query q sees key k when q - window < k (indices in the row)."""
    same = ids[:, :, None] == ids[:, None, :]
    if window is not None:
        same = same & (np.arange(T)[None, :] > np.arange(T)[:, None] - window)
    return same & np.tril(np.ones((T, T), bool)) if causal else same


def assert_close_where_real(got, want, ids):
    real = ids != 0
    np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("ids, window", [(PACKED, None), (ONE_DOCUMENT, None), (PACKED, 3)],
                         ids=["packed", "one_document", "packed_sliding_window"])
def test_xla_path_matches_torch_with_segments_padding_and_gqa(ids, window):
    q, k, v = qkv()
    mask = layers.Mask(segment_ids=jnp.asarray(ids), window=window)
    got = layers.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)[0]
    assert_close_where_real(got, reference(q, k, v, allowed_by(ids, window=window)), ids)


@pytest.mark.parametrize("ids, causal, window", [(ONE_DOCUMENT, True, None), (ONE_DOCUMENT, False, None),
                                                 (None, True, None), (ONE_DOCUMENT, True, 4)],
                         ids=["sequence_lengths", "sequence_lengths_bidirectional", "causal_only", "sliding_window"])
def test_kernel_path_arguments_match_torch(ids, causal, window):
    """The cuDNN call (per-row lengths for one document per row, a static window), run on XLA here; and
    the mask it stands for."""
    q, k, v = qkv(1)
    lengths = None if ids is None else jnp.asarray((ids != 0).sum(1), jnp.int32)
    mask = layers.Mask(lengths=lengths, causal=causal, window=window)
    assert mask.kernel_ready
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    kernel = layers.kernel_attention(q, k, v, mask, scale=D**-0.5, implementation="xla")
    ids = np.ones((B, T), np.int32) if ids is None else ids
    want = reference(np.asarray(q), np.asarray(k), np.asarray(v), allowed_by(ids, causal, window))
    assert_close_where_real(kernel, want, ids)
    assert_close_where_real(layers.attention(q, k, v, mask)[0], want, ids)  # the XLA path on the same mask


def test_left_padding_and_bidirectional_attention_match_torch():
    q, k, v = qkv(2)
    padding = np.ones((B, T), np.int32)
    padding[1, :4] = 0  # left padding (batched prompts)
    padding[2, -2:] = 0
    causal, _ = layers.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                 layers.Mask(padding=jnp.asarray(padding)))
    assert_close_where_real(causal, reference(q, k, v, allowed_by(padding)), padding)
    both = layers.Mask(padding=jnp.asarray(padding), causal=False)  # BERT
    got, _ = layers.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), both)
    assert_close_where_real(got, reference(q, k, v, allowed_by(padding, causal=False)), padding)


def test_auto_picks_cudnn_only_where_it_can_run_and_says_why_not():
    resolve = layers.resolve_attention
    assert resolve("auto", compute_dtype="float32", head_dim=64, platform="cpu") == ("xla", None)
    assert resolve("auto", compute_dtype="bfloat16", head_dim=64, platform="gpu")[0] == "cudnn"
    implementation, note = resolve("auto", compute_dtype="float32", head_dim=64, platform="gpu")
    assert implementation == "xla" and "bfloat16" in note
    implementation, note = resolve("cudnn", compute_dtype="bfloat16", head_dim=64, platform="cpu")
    assert implementation == "xla" and "GPU" in note
    assert resolve("cudnn", compute_dtype="bfloat16", head_dim=100, platform="gpu")[0] == "xla"
    implementation, note = resolve("auto", compute_dtype="bfloat16", head_dim=64, packed=True, platform="gpu")
    assert implementation == "xla" and "data.pack=false" in note  # segment ids: cuDNN cannot take them
    implementation, note = resolve("cudnn", compute_dtype="bfloat16", head_dim=64, softcap=50.0, platform="gpu")
    assert implementation == "xla" and "soft-capping" in note  # Gemma 2: no fused kernel caps scores
    implementation, note = resolve("cudnn", compute_dtype="bfloat16", head_dim=64, layer_windows=True, platform="gpu")
    assert implementation == "xla" and "windows as data" in note  # Gemma 3: per-layer windows


def test_attention_over_a_cache_matches_torch_over_a_cache_with_padding_and_unfilled_slots():
    """Decoding's attention reads keys/values in the cache layout [b * kv_heads, slots, d]; slots
    beyond the newest token and left-padding slots are masked (batch padding rows included)."""
    q, k, v = qkv(3)
    new = 2  # the last two tokens are the queries; the cache has 4 more slots than tokens
    padding = np.array([[0] * 3 + [1] * 9, [1] * 12, [0] * 12], bool)  # row 2: batch padding, no real token
    slots = T + 4
    allowed = np.zeros((B, new, slots), bool)
    for query in range(new):
        allowed[:, query, :T - new + query + 1] = padding[:, :T - new + query + 1]
    keys, values = (np.zeros((B, KV_HEADS, slots, D), np.float32) for _ in range(2))
    keys[:, :, :T], values[:, :, :T] = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

    def both_ways(mask):
        # The cache already holds every key; the queries' own keys are written again where they lie.
        cache = LayerCache(jnp.asarray(keys.reshape(B * KV_HEADS, slots, D)),
                           jnp.asarray(values.reshape(B * KV_HEADS, slots, D)), jnp.asarray(T - new))
        cached, _ = layers.attention(jnp.asarray(q[:, -new:]), jnp.asarray(k[:, -new:]), jnp.asarray(v[:, -new:]),
                                     mask, cache=cache)
        dense, _ = layers.attention(jnp.asarray(q[:, -new:]), jnp.asarray(keys.transpose(0, 2, 1, 3)),
                                    jnp.asarray(values.transpose(0, 2, 1, 3)), mask)
        np.testing.assert_allclose(np.asarray(cached), np.asarray(dense), atol=1e-6)  # batch padding: no NaN
        return np.asarray(cached)

    got = both_ways(layers.Mask(dense=jnp.asarray(allowed[:, None])))
    want = reference(q[:2, -new:], keys[:2].transpose(0, 2, 1, 3), values[:2].transpose(0, 2, 1, 3), allowed[:2])
    np.testing.assert_allclose(got[:2], want, atol=1e-5)
    both_ways(layers.Mask(dense=jnp.asarray(allowed[1:2, None])))  # one mask row for the whole batch


@pytest.mark.parametrize("mask", [
    layers.Mask(segment_ids=jnp.asarray(PACKED)),
    layers.Mask(segment_ids=jnp.asarray(PACKED), window=3),
    layers.Mask(lengths=jnp.asarray((ONE_DOCUMENT != 0).sum(1), jnp.int32)),
    layers.Mask(padding=jnp.asarray(ONE_DOCUMENT)),
], ids=["packed", "packed_sliding_window", "lengths", "padding"])
def test_causal_attention_by_query_blocks_matches_torch(mask, monkeypatch):
    """Blocks of 5 query rows over 12 tokens (5, 5, 2), each over the keys up to its end: torch's answer."""
    monkeypatch.setattr(layers, "query_block", lambda length: 5)
    q, k, v = qkv(4)
    ids = np.asarray(mask.ids()) if mask.ids() is not None else ONE_DOCUMENT
    got, _ = layers.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
    assert_close_where_real(got, reference(q, k, v, allowed_by(ids, window=mask.window)), ids)


def test_causal_blocks_skip_the_scores_above_the_diagonal_with_the_same_gradients(monkeypatch):
    """At 300 tokens (blocks of 128, 128, 44) the forward and backward never hold a [300, 300] score matrix,
    and values and gradients equal those of attention over the whole scores."""
    rng = np.random.RandomState(5)
    length = 300
    q = jnp.asarray(rng.randn(1, length, 2, 8), jnp.float32)
    k, v = (jnp.asarray(rng.randn(1, length, 1, 8), jnp.float32) for _ in range(2))
    padding = jnp.asarray(np.arange(length)[None] < 290, jnp.int32)  # padding at the end, as batches have it
    mask = layers.Mask(padding=padding)

    def grads_and_text():
        def loss(q, k, v):  # traced anew on each call, under the query_block of the moment
            out, _ = layers.attention(q, k, v, mask)
            return jnp.sum(jnp.where(padding[..., None, None] != 0, out, 0.0) ** 2), out

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
        return step(q, k, v), step.lower(q, k, v).as_text()

    ((_, out), grads), text = grads_and_text()
    assert f"{length}x{length}x" not in text and "128x128x" in text  # the first block's scores, no whole matrix
    monkeypatch.setattr(layers, "query_block", lambda length: length)  # one block: the whole scores
    ((_, want), want_grads), text = grads_and_text()
    assert f"{length}x{length}x" in text  # the check above can see a whole score matrix
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=1e-5)
    for got, expected in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-4, rtol=1e-4)
