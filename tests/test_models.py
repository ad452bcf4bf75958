"""Golden-logit parity of each family against transformers' PyTorch classes, and model-level behaviour."""

from __future__ import annotations

import inspect

import chex
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxlm
from hf_checkpoints import (
    VOCAB,
    left_padded_batch,
    padded_batch,
    tiny_bert,
    tiny_gemma2,
    tiny_gemma3,
    tiny_gpt2,
    tiny_llama,
    tiny_mistral,
    tiny_phi3,
    tiny_qwen2,
    tiny_qwen3,
    torch_logits,
)
from jaxlm.models import ARCHITECTURES
from jaxlm.models.contract import CausalLM, is_causal_lm

LLAMA_VARIANTS = {
    "gqa_untied": dict(kv_heads=2),
    "mha_tied": dict(kv_heads=4, tied=True),
    "bias_llama3_rope": dict(
        bias=True,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8,
        },
    ),
    "linear_rope": dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
}


def _close_on_real_tokens(ours, ref, mask, atol):
    ours = np.asarray(ours)
    real = mask.astype(bool)
    assert np.abs(ours[real] - ref[real]).max() <= atol, np.abs(ours[real] - ref[real]).max()


@pytest.mark.parametrize("variant", sorted(LLAMA_VARIANTS))
def test_llama_logits_match_transformers(tmp_path, variant):
    ref_model = tiny_llama(tmp_path, **LLAMA_VARIANTS[variant])
    ids, mask = padded_batch()
    model, _ = jaxlm.load_pretrained(tmp_path)
    logits = model(jnp.asarray(ids), jnp.asarray(mask))
    chex.assert_shape(logits, (*ids.shape, VOCAB))
    _close_on_real_tokens(logits, torch_logits(ref_model, ids, mask), mask, atol=1e-4)


def test_mistral_logits_match_transformers(tmp_path):
    ref_model = tiny_mistral(tmp_path)
    ids, mask = padded_batch(seed=4)
    model, _ = jaxlm.load_pretrained(tmp_path)
    assert type(model).__name__ == "MistralForCausalLM"
    logits = model(jnp.asarray(ids), jnp.asarray(mask))
    _close_on_real_tokens(logits, torch_logits(ref_model, ids, mask), mask, atol=1e-4)


# Llama-architecture families with grouped-query attention, each with its own parts set randomly by the writer.
DECODER_VARIANTS = {
    "qwen2": (tiny_qwen2, {}, "Qwen2ForCausalLM"),
    "qwen2_tied": (tiny_qwen2, dict(tied=True), "Qwen2ForCausalLM"),
    "qwen3": (tiny_qwen3, {}, "Qwen3ForCausalLM"),
    "qwen3_tied_bias": (tiny_qwen3, dict(tied=True, bias=True), "Qwen3ForCausalLM"),
    "mistral_window": (tiny_mistral, dict(sliding_window=4), "MistralForCausalLM"),  # rows of 11: past the window
    "gemma2": (tiny_gemma2, {}, "Gemma2ForCausalLM"),  # windows of 4 on alternate layers, soft-caps
    "gemma3": (tiny_gemma3, {}, "Gemma3ForCausalLM"),  # local and global RoPE, q/k norms
    "phi3": (tiny_phi3, {}, "Phi3ForCausalLM"),
    "phi3_window": (tiny_phi3, dict(sliding_window=4), "Phi3ForCausalLM"),  # Phi-3-mini-4k's kind, past it
    # the batch reaches 11 positions: within 16 original ones longrope takes its short factors, past 8 its long
    "phi3_longrope_short": (tiny_phi3, dict(longrope=True, original=16), "Phi3ForCausalLM"),
    "phi3_longrope_long_partial_tied": (tiny_phi3, dict(longrope=True, original=8, partial_rotary=0.75, tied=True),
                                        "Phi3ForCausalLM"),
}


@pytest.mark.parametrize("variant", sorted(DECODER_VARIANTS))
def test_decoder_family_logits_match_transformers_on_a_left_padded_batch(tmp_path, variant):
    write, options, architecture = DECODER_VARIANTS[variant]
    ref_model = write(tmp_path, **options)
    ids, mask, positions = left_padded_batch(seed=5)
    model, _ = jaxlm.load_pretrained(tmp_path)
    assert type(model).__name__ == architecture
    logits = model(jnp.asarray(ids), jnp.asarray(mask))
    ref = torch_logits(ref_model, ids, mask, position_ids=torch.tensor(positions, dtype=torch.long))
    _close_on_real_tokens(logits, ref, mask, atol=1e-4)


@pytest.mark.parametrize("variant", ["qwen2", "mistral_window", "phi3_window"])
def test_causal_attention_by_query_blocks_keeps_logits_on_a_left_padded_batch(tmp_path, variant, monkeypatch):
    """Training's causal attention in blocks of query rows (`layers.causal_blocks`), here 4, 4 and 3 rows of 11
    so that tiny rows take the path that long ones do: still transformers' logits, sliding windows included."""
    from jaxlm.models import layers

    monkeypatch.setattr(layers, "query_block", lambda length: 4)
    write, options, _ = DECODER_VARIANTS[variant]
    ref_model = write(tmp_path, **options)
    ids, mask, positions = left_padded_batch(seed=5)
    model, _ = jaxlm.load_pretrained(tmp_path)
    logits = model(jnp.asarray(ids), jnp.asarray(mask))
    ref = torch_logits(ref_model, ids, mask, position_ids=torch.tensor(positions, dtype=torch.long))
    _close_on_real_tokens(logits, ref, mask, atol=1e-4)


def test_gpt2_logits_match_transformers(tmp_path):
    ref_model = tiny_gpt2(tmp_path)
    ids, mask = padded_batch(seed=1)
    model, _ = jaxlm.load_pretrained(tmp_path)
    logits = model(jnp.asarray(ids), jnp.asarray(mask))
    chex.assert_shape(logits, (*ids.shape, VOCAB))
    _close_on_real_tokens(logits, torch_logits(ref_model, ids, mask), mask, atol=1e-4)


def test_bert_hidden_states_match_transformers(tmp_path):
    ref_model = tiny_bert(tmp_path)
    ids, mask = padded_batch(seed=2)
    types = (np.arange(ids.shape[1]) >= 5).astype(np.int32)[None].repeat(ids.shape[0], 0)
    model, _ = jaxlm.load_pretrained(tmp_path)
    hidden = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    chex.assert_shape(hidden, (*ids.shape, 64))
    ref = torch_logits(ref_model, ids, mask, token_type_ids=torch.tensor(types, dtype=torch.long))
    _close_on_real_tokens(hidden, ref, mask, atol=1e-4)


def test_bert_token_classification_logits_match_transformers(tmp_path):
    ref_model = tiny_bert(tmp_path, num_labels=5)
    ids, mask = padded_batch(seed=3)
    model, _ = jaxlm.load_pretrained(tmp_path)
    assert type(model).__name__ == "BertForTokenClassification"
    assert model.config.id2label == tuple(f"TAG{i}" for i in range(5))
    logits = model(jnp.asarray(ids), jnp.asarray(mask))
    chex.assert_shape(logits, (*ids.shape, 5))
    _close_on_real_tokens(logits, torch_logits(ref_model, ids, mask), mask, atol=1e-4)


def test_new_token_classification_head_on_a_base_encoder(tmp_path):
    tiny_bert(tmp_path)
    labels = {"0": "O", "1": "B-PER", "2": "I-PER"}
    model, _ = jaxlm.load_pretrained(tmp_path, architecture="BertForTokenClassification",
                                     config_overrides={"id2label": labels})
    base, _ = jaxlm.load_pretrained(tmp_path)
    ids, mask = padded_batch(seed=4)
    chex.assert_shape(model(jnp.asarray(ids), jnp.asarray(mask)), (*ids.shape, 3))
    np.testing.assert_array_equal(  # the encoder is the checkpoint's, only the classifier is new
        model.bert.encoder.layer[0].attention.self.query.kernel[...],
        base.encoder.layer[0].attention.self.query.kernel[...],
    )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_documents_do_not_attend_across_segments(tmp_path, family):
    (tiny_llama if family == "llama" else tiny_gpt2)(tmp_path)
    model, _ = jaxlm.load_pretrained(tmp_path)
    rng = np.random.RandomState(5)
    doc_a, doc_b = rng.randint(3, VOCAB, 7), rng.randint(3, VOCAB, 5)
    packed = np.concatenate([doc_a, doc_b, [0, 0]])[None]
    segments = np.array([[1] * 7 + [2] * 5 + [0, 0]])
    positions = np.array([list(range(7)) + list(range(5)) + [0, 0]])
    logits = np.asarray(model(jnp.asarray(packed), positions=jnp.asarray(positions), segment_ids=jnp.asarray(segments)))
    alone_a = np.asarray(model(jnp.asarray(doc_a[None])))[0]
    alone_b = np.asarray(model(jnp.asarray(doc_b[None])))[0]
    np.testing.assert_allclose(logits[0, :7], alone_a, atol=1e-5)
    np.testing.assert_allclose(logits[0, 7:12], alone_b, atol=1e-5)


CACHE_WRITERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "qwen3": tiny_qwen3,
                 "mistral_window": lambda path: tiny_mistral(path, sliding_window=4)}


@pytest.mark.parametrize("family", sorted(CACHE_WRITERS))
def test_kv_cache_decoding_matches_full_forward(tmp_path, family):
    CACHE_WRITERS[family](tmp_path)
    model, _ = jaxlm.load_pretrained(tmp_path)
    ids = np.random.RandomState(6).randint(3, VOCAB, (2, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # left padding, as batched generation uses
    full = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    cache = model.init_cache(batch=2, slots=16)
    ids_, positions_, mask_ = (jnp.asarray(a[:, :6]) for a in (ids, positions, mask))
    prefill, cache = model(ids_, mask_, positions=positions_, cache=cache)
    steps = [prefill]
    for t in range(6, 9):
        new, new_positions = jnp.asarray(ids[:, t : t + 1]), jnp.asarray(positions[:, t : t + 1])
        logits, cache = model(new, positions=new_positions, cache=cache)
        steps.append(logits)
    chex.assert_shape(steps[-1], (2, 1, VOCAB))
    cached = np.concatenate([np.asarray(s) for s in steps], axis=1)
    _close_on_real_tokens(cached, full, mask, atol=1e-5)
    assert int(cache.index) == 9


@pytest.mark.parametrize("write", [tiny_llama, tiny_qwen3, tiny_gemma2], ids=["llama", "qwen3", "gemma2"])
def test_bfloat16_loading_stays_close_to_float32(tmp_path, write):
    write(tmp_path)
    ids, mask = padded_batch()
    f32, _ = jaxlm.load_pretrained(tmp_path)
    bf16, _ = jaxlm.load_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert bf16.layers[0].self_attn.q_proj.kernel[...].dtype == jnp.bfloat16
    out16 = bf16(jnp.asarray(ids), jnp.asarray(mask))
    assert out16.dtype == jnp.bfloat16
    out32 = np.asarray(f32(jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    err = np.abs(np.asarray(out16, np.float32)[real] - out32[real])
    assert err.max() < 0.05 * np.abs(out32[real]).max()
    assert (np.asarray(out16, np.float32)[real].argmax(-1) == out32[real].argmax(-1)).mean() > 0.9


def test_the_registry_row_says_which_classes_keep_the_causal_lm_contract():
    methods = ["__call__", *(name for name, value in vars(CausalLM).items()
                             if inspect.isfunction(value) and not name.startswith("_"))]
    assert {"init_cache", "logits", "output_kernel"} <= set(methods)
    for arch in ARCHITECTURES.values():
        keeps = all(callable(getattr(arch.model_cls, name, None)) for name in methods)
        assert keeps == arch.family.causal_lm, arch.name


def test_callers_ask_the_row_whether_a_model_generates(tmp_path):
    tiny_gpt2(tmp_path / "gpt2")
    tiny_bert(tmp_path / "bert")
    gpt2, _ = jaxlm.load_pretrained(tmp_path / "gpt2")
    bert, _ = jaxlm.load_pretrained(tmp_path / "bert")
    assert is_causal_lm(gpt2) and isinstance(gpt2, CausalLM)
    assert not is_causal_lm(bert) and not isinstance(bert, CausalLM)
    assert not is_causal_lm(object())
