"""The chunked cross-entropy: the same loss and gradients as the plain one, without whole-batch logits."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxlm
from hf_checkpoints import VOCAB, tiny_gemma2, tiny_gpt2, tiny_llama
from jaxlm.compute import losses
from jaxlm.models.lora import apply_lora


def lm_batch(batch=4, seq=16, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, VOCAB, size=(batch, seq + 1)).astype(np.int32)
    mask = np.ones((batch, seq), np.int32)
    mask[1, :5] = 0  # a prompt that does not count
    mask[2, -3:] = 0
    segments = np.where(np.arange(seq) < seq // 2, 1, 2)[None].repeat(batch, 0).astype(np.int32)
    positions = np.concatenate([np.arange(seq // 2), np.arange(seq - seq // 2)])[None].repeat(batch, 0)
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask,
            "segment_ids": segments, "positions": positions.astype(np.int32)}


def reference_loss(logits, batch):
    """The plain loss: whole-batch float32 logits and optax's cross-entropy."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["targets"])
    return jnp.sum(nll * batch["loss_mask"])


def forward(model, batch):
    return model(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])


def value_and_grad(loss, model):
    """Jitted value and parameter gradients of loss(model) (eager NNX would be slow)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # rest: Gemma's per-layer constants
    return jax.jit(jax.value_and_grad(lambda p: loss(nnx.merge(graphdef, p, rest))))(params)


_MODELS = {}


def model_and_reference(family, tmp_path_factory):
    """(model, plain loss and gradients on lm_batch()), built once per family."""
    if family not in _MODELS:
        folder = tmp_path_factory.mktemp(family)
        {"gpt2": tiny_gpt2, "gemma2": tiny_gemma2}.get(family, tiny_llama)(folder)
        model = jaxlm.load_pretrained(folder)[0]
        if family == "llama-lora-head":  # the head is no longer one matrix: logits are recomputed per chunk
            apply_lora(model, ["lm_head"], 4, 8.0)
        batch = {k: jnp.asarray(v) for k, v in lm_batch().items()}
        _MODELS[family] = model, value_and_grad(lambda m: reference_loss(forward(m, batch), batch), model)
    return _MODELS[family]


# 12 tokens: chunks of 3 positions x 4 rows, the last one padded. GPT-2 has a tied head; LoRA on lm_head
# makes the head more than one matrix, so its chunks are recomputed instead; so does Gemma 2's final soft-cap.
@pytest.mark.parametrize("family, chunk_tokens", [("llama", 12), ("gpt2", 12), ("llama-lora-head", 12),
                                                  ("gemma2", 12)])
def test_chunked_loss_and_gradients_equal_the_plain_loss(family, chunk_tokens, tmp_path_factory):
    model, (want, want_grads) = model_and_reference(family, tmp_path_factory)
    batch = {k: jnp.asarray(v) for k, v in lm_batch().items()}
    chunked = lambda m: losses.loss_terms("causal_lm", m, batch, chunk_tokens=chunk_tokens)[0]  # noqa: E731
    got, got_grads = value_and_grad(chunked, model)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    chex.assert_trees_all_close(got_grads, want_grads, atol=1e-5, rtol=1e-4)


def test_chunked_loss_never_holds_whole_batch_logits(tmp_path_factory):
    model, _ = model_and_reference("llama", tmp_path_factory)
    batch = {k: jnp.asarray(v) for k, v in lm_batch().items()}
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p: losses.loss_terms("causal_lm", nnx.merge(graphdef, p), batch, chunk_tokens=32)[0]  # noqa: E731
    text = jax.jit(jax.value_and_grad(loss)).lower(params).as_text()
    assert f"4x16x{VOCAB}x" not in text, "a [batch, seq, vocab] array exists: the loss is not chunked"
    assert f"4x8x{VOCAB}xf32" in text  # one chunk: every row, 8 positions


def test_unpacked_rows_give_the_same_loss_through_lengths(tmp_path_factory):
    """data.pack=false: one document per row, then padding; attention takes lengths instead of segment ids."""
    model, _ = model_and_reference("llama", tmp_path_factory)
    batch = {k: jnp.asarray(v) for k, v in lm_batch().items()}
    ends = jnp.asarray([16, 11, 7, 13])[:, None]
    batch["segment_ids"] = (jnp.arange(16)[None, :] < ends).astype(jnp.int32)
    batch["positions"] = jnp.broadcast_to(jnp.arange(16), (4, 16))
    batch["loss_mask"] = batch["segment_ids"].astype(jnp.float32)
    graphdef, params = nnx.split(model, nnx.Param)
    loss = jax.jit(lambda p, packed: losses.loss_terms("causal_lm", nnx.merge(graphdef, p), batch, packed=packed)[0],
                   static_argnums=1)
    np.testing.assert_allclose(loss(params, False), loss(params, True), rtol=1e-6)


@pytest.mark.parametrize("num_sources", [0, 3])
def test_eval_accuracy_and_the_split_by_source_agree_with_the_plain_logits(num_sources, tmp_path_factory):
    """The eval step's chunked (loss, argmax hits) and bandit mixing's per-source split give the whole-batch numbers."""
    model, (want, _) = model_and_reference("llama", tmp_path_factory)
    batch = {k: jnp.asarray(v) for k, v in lm_batch().items()}
    logits = forward(model, batch).astype(jnp.float32)
    weights = batch["loss_mask"].astype(jnp.float32)
    if num_sources:
        sources = jnp.asarray(np.arange(4)[:, None].repeat(16, 1) % num_sources, jnp.int32)
        terms = jax.jit(lambda m: losses.loss_terms("causal_lm", m, {**batch, "source_id": sources},
                                                   num_sources=num_sources))(model)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]) * weights
        for s in range(num_sources):
            np.testing.assert_allclose(terms.by_source[0][s], jnp.sum(jnp.where(sources == s, nll, 0)), rtol=1e-5)
            np.testing.assert_allclose(terms.by_source[1][s], jnp.sum(jnp.where(sources == s, weights, 0)))
    else:  # every other target is the model's own argmax, so there are hits to count
        batch["targets"] = jnp.where(jnp.arange(16) % 2 == 0, jnp.argmax(logits, -1), batch["targets"])
        want = reference_loss(logits, batch)
        terms = jax.jit(lambda m: losses.loss_terms("causal_lm", m, batch, chunk_tokens=12, count_correct=True))(model)
        hits = jnp.sum((jnp.argmax(logits, -1) == batch["targets"]) * weights)
        assert float(terms.correct) == float(hits) and float(hits) > 0
    np.testing.assert_allclose(terms.loss_sum, want, rtol=1e-5)


def test_kl_to_the_starting_model_is_the_kl_of_the_two_softmaxes_chunked_or_not():
    """train.kl_to_base's term: sum over counted tokens of KL(p || q), p the model's and q the reference's softmax."""
    rng = np.random.default_rng(0)
    hidden, reference_hidden = (jnp.asarray(rng.normal(size=(3, 10, 8)), jnp.float32) for _ in range(2))
    weights = jnp.asarray(rng.integers(0, 2, size=(3, 10)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(8, 40)), jnp.float32)
    projects = type("Head", (), {"logits": staticmethod(lambda h: h @ head)})  # what the KL reads of a model
    log_p = jax.nn.log_softmax(np.asarray(hidden @ head, np.float64), -1)
    log_q = jax.nn.log_softmax(np.asarray(reference_hidden @ head, np.float64), -1)
    expected = np.sum(np.sum(np.exp(log_p) * (log_p - log_q), -1) * np.asarray(weights))
    for chunk_tokens in (0, 7):  # 7: chunks of 2 positions of all 3 rows, the last one padded
        kl = losses.kl_to_reference(hidden, projects, reference_hidden, projects, weights, chunk_tokens)
        np.testing.assert_allclose(float(kl), expected, rtol=1e-5)
    assert float(losses.kl_to_reference(hidden, projects, hidden, projects, weights, 7)) == 0.0


def test_distillation_kl_is_torchs_kl_div_of_the_softened_distributions_chunked_or_not():
    """train.distill's term: sum over counted tokens of KL(teacher || student) at temperature T, as
    torch.nn.functional.kl_div(student log-probs, teacher log-probs, log_target=True) computes it."""
    import torch

    rng = np.random.default_rng(1)
    hidden, teacher_hidden = (jnp.asarray(rng.normal(size=(3, 10, 8)), jnp.float32) for _ in range(2))
    weights = jnp.asarray(rng.integers(0, 2, size=(3, 10)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(8, 40)), jnp.float32)
    projects = type("Head", (), {"logits": staticmethod(lambda h: h @ head)})
    temperature = 2.0

    def log_softmax(h):
        return torch.log_softmax(torch.tensor(np.asarray(h @ head), dtype=torch.float64) / temperature, -1)

    per_token = torch.nn.functional.kl_div(log_softmax(hidden), log_softmax(teacher_hidden), reduction="none",
                                           log_target=True).sum(-1)
    expected = float((per_token * torch.tensor(np.asarray(weights), dtype=torch.float64)).sum())
    for chunk_tokens in (0, 7):  # 7: chunks of 2 positions of all 3 rows, the last one padded
        kl = losses.distill_kl(hidden, projects, teacher_hidden, projects, weights, chunk_tokens, temperature)
        np.testing.assert_allclose(float(kl), expected, rtol=1e-5)
    # the gradient reaches the student only
    grads = jax.grad(lambda h, t: losses.distill_kl(h, projects, t, projects, weights, 7, temperature),
                     argnums=(0, 1))(hidden, teacher_hidden)
    assert float(jnp.abs(grads[0]).max()) > 0 and float(jnp.abs(grads[1]).max()) == 0
