"""The real shipped model: SmolLM2-135M-Instruct from its GGUF file."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import jaxlm

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return jaxlm.load_pretrained(smollm2_gguf)


def test_gguf_config_and_tokenizer_come_from_the_metadata(smollm2):
    model, tokenizer = smollm2
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 576, 9, 3)
    assert cfg.tie_word_embeddings and cfg.rope_theta == 1e5
    prompt = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in prompt


def test_gguf_logits_match_transformers_gguf_loader(smollm2, smollm2_gguf):
    model, tokenizer = smollm2
    encoded = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="np", return_dict=True)
    ids = encoded["input_ids"]
    ours = np.asarray(model(jnp.asarray(ids)))
    folder, name = os.path.split(smollm2_gguf)
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = ref(torch.tensor(ids)).logits.numpy()
    assert np.abs(ours - theirs).max() <= 1e-3


def test_export_answers_the_capital_of_france_in_transformers(smollm2, tmp_path):
    model, tokenizer = smollm2
    jaxlm.export_pretrained(model, tmp_path, tokenizer)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    inputs = hf_tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = hf_model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = hf_tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_tokenizer_rebuilt_from_metadata_matches_transformers_gguf_converter(smollm2, smollm2_gguf):
    _, ours = smollm2
    folder, name = os.path.split(smollm2_gguf)
    theirs = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    texts = [
        "Hello world, it's me!  x",
        "In 2024, 12345 people paid $3.50 each.\n\nNew\tline",
        "<|im_start|>user\nhé ünïcödé 日本語 🙂<|im_end|>\n",
        "  leading spaces and DON'T",
    ]
    for text in texts:
        assert ours(text).input_ids == theirs(text).input_ids
        assert ours.decode(ours(text).input_ids) == text
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == (theirs.bos_token, theirs.eos_token, theirs.pad_token)


def test_jaxlms_reader_reads_the_fields_and_tensors_ggufs_own_reader_reads(smollm2_gguf):
    """jaxlm reads GGUF files over a plain view of the memory map (faster metadata); nothing read differs."""
    import gguf

    from jaxlm.hf.gguf import _reader_class

    ours, theirs = _reader_class()(smollm2_gguf), gguf.GGUFReader(smollm2_gguf)
    assert type(ours.data) is np.ndarray and type(theirs.data) is np.memmap
    assert list(ours.fields) == list(theirs.fields)
    for key, field in theirs.fields.items():
        assert ours.fields[key].contents() == field.contents(), key
    assert len(ours.tensors) == len(theirs.tensors) == 272
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert (a.name, a.tensor_type, list(a.shape)) == (b.name, b.tensor_type, list(b.shape))
        np.testing.assert_array_equal(a.data, b.data, err_msg=a.name)
