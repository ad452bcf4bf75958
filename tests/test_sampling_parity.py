"""Greedy decoding gives exactly transformers' `generate(do_sample=False)` tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jaxlm
from hf_checkpoints import (
    VOCAB,
    tiny_gemma2,
    tiny_gemma3,
    tiny_gpt2,
    tiny_llama,
    tiny_mistral,
    tiny_phi3,
    tiny_qwen2,
    tiny_qwen3,
)

NEW_TOKENS = 12


def random_prompts(lengths, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(3, VOCAB, size=n).tolist() for n in lengths]


def transformers_generate(model, prompts, pad_id=0, **kwargs):
    """Left-padded batch through HF generate; returns each row's new tokens, cut after EOS like ours."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=pad_id, **kwargs)
    eos = kwargs.get("eos_token_id", model.generation_config.eos_token_id)
    eos = {eos} if isinstance(eos, int) else set(eos or ())
    rows = []
    for row in out[:, width:].tolist():
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        rows.append(row if stop is None else row[: stop + 1])
    return rows


@pytest.fixture(autouse=True)
def torch_single_thread():
    """CI shares 2 cores between two pytest-xdist workers; torch's OpenMP threads then wait on each
    other and generate() slows down 30x. One thread computes the same tokens, quickly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    reference = tiny_llama(path)
    model, _ = jaxlm.load_pretrained(path)
    return model, reference


def test_llama_greedy_batch_with_left_padding_matches_transformers(llama):
    model, reference = llama
    prompts = random_prompts([9, 3, 6, 1])
    ours = jaxlm.generate(model, None, prompts, max_new_tokens=NEW_TOKENS)
    assert ours.token_ids == transformers_generate(reference, prompts, max_new_tokens=NEW_TOKENS)


def test_gpt2_greedy_batch_with_left_padding_matches_transformers(tmp_path):
    reference = tiny_gpt2(tmp_path)
    model, _ = jaxlm.load_pretrained(tmp_path)
    prompts = random_prompts([4, 10, 7], seed=1)
    ours = jaxlm.generate(model, None, prompts, max_new_tokens=NEW_TOKENS)
    assert ours.token_ids == transformers_generate(reference, prompts, max_new_tokens=NEW_TOKENS)


# Sliding windows of 4 tokens: prompts and generations run past them. Phi-3 with longrope past its 4 original
# positions from the first token (its long factors throughout, as in transformers) and Phi-4-mini's partial
# rotary factor.
FAMILIES = {"qwen2": lambda path: tiny_qwen2(path, tied=True), "qwen3": lambda path: tiny_qwen3(path, tied=True),
            "mistral_window": lambda path: tiny_mistral(path, sliding_window=4), "gemma2": tiny_gemma2,
            "gemma3": tiny_gemma3,
            "phi3_longrope_partial_window": lambda path: tiny_phi3(path, longrope=True, original=4,
                                                                   partial_rotary=0.75, tied=True, sliding_window=4)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_llama_architecture_families_greedy_batch_matches_transformers(tmp_path, family):
    reference = FAMILIES[family](tmp_path)
    model, _ = jaxlm.load_pretrained(tmp_path)
    prompts = random_prompts([7, 2, 10], seed=4)
    ours = jaxlm.generate(model, None, prompts, max_new_tokens=NEW_TOKENS)
    assert ours.token_ids == transformers_generate(reference, prompts, max_new_tokens=NEW_TOKENS)


def test_rows_stop_at_eos_where_transformers_stops(llama):
    model, reference = llama
    prompts = random_prompts([5, 8], seed=2)
    free = jaxlm.generate(model, None, prompts, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    eos = free.token_ids[0][3]  # a token row 0 is known to produce, so the stop is really exercised
    ours = jaxlm.generate(model, None, prompts, max_new_tokens=NEW_TOKENS, stop_token_ids=[eos], stop_at_eos=False)
    assert ours.token_ids[0] == free.token_ids[0][:4]
    assert ours.finish_reasons[0] == "stop"
    assert ours.token_ids == transformers_generate(reference, prompts, max_new_tokens=NEW_TOKENS, eos_token_id=eos)


def test_greedy_with_repetition_penalty_matches_transformers(llama):
    model, reference = llama
    prompts = random_prompts([6, 6], seed=3)  # equal lengths: transformers also penalises pad ids in the input
    ours = jaxlm.generate(model, None, prompts, max_new_tokens=NEW_TOKENS, repetition_penalty=1.5)
    expected = transformers_generate(reference, prompts, max_new_tokens=NEW_TOKENS, repetition_penalty=1.5)
    assert ours.token_ids == expected
    assert ours.token_ids != jaxlm.generate(model, None, prompts, max_new_tokens=NEW_TOKENS).token_ids


@pytest.mark.slow
def test_smollm2_greedy_chat_matches_transformers(smollm2_gguf, tmp_path):
    import transformers

    model, tokenizer = jaxlm.load_pretrained(smollm2_gguf)
    jaxlm.export_pretrained(model, tmp_path, tokenizer)  # transformers reads this faster than the GGUF
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    chats = ["What is the capital of France?", "Name three colours.", "Say hello in Spanish."]
    ours = jaxlm.generate(model, tokenizer, chats, max_new_tokens=32, chat=True)
    prompts = jaxlm.sampling.encode_prompts(tokenizer, chats, chat=True)
    expected = transformers_generate(reference, prompts, pad_id=tokenizer.pad_token_id, max_new_tokens=32)
    assert ours.token_ids == expected
    assert "Paris" in ours.texts[0]
