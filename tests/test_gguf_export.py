"""GGUF export: the files read back in transformers' GGUF loader and in jaxlm, with llama.cpp's metadata."""

from __future__ import annotations

import dataclasses
import os

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import jaxlm
from hf_checkpoints import (
    padded_batch,
    tiny_gemma2,
    tiny_gemma3,
    tiny_gpt2,
    tiny_llama,
    tiny_mixtral,
    tiny_phi3,
    tiny_qwen2,
    tiny_qwen3,
    tiny_qwen3_moe,
    torch_logits,
)
from jaxlm.errors import UserError

CHATML = ("{% for message in messages %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TEXT = ["The capital of France is Paris, and 1234 people live on my street.",
        "What is the weather like today? It rains in London in 2024.",
        "Tell me a joke about computers and cats, please."] * 20
# Tolerances, as the largest logit difference over a 64-wide, 2-layer model whose logits reach ~1:
# f16 keeps 11 significant bits (relative error 2^-11 per weight); q8_0 rounds each weight to 1/254
# of its 32-value block's absmax. Both errors average out over the dot products.
TOLERANCE = {"f32": 1e-5, "f16": 2e-3, "q8_0": 3e-2}


def byte_level_tokenizer(smollm_digits: bool):
    """A small real BPE tokenizer (trained here) with SmolLM2's special tokens and chat template."""
    backend = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    digits = [pre_tokenizers.Digits(individual_digits=True)] if smollm_digits else []
    backend.pre_tokenizer = pre_tokenizers.Sequence([*digits, byte_level]) if digits else byte_level
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(TEXT, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>",
        pad_token="<|im_end|>", chat_template=CHATML)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny tied Llama (SmolLM2's layout) with rows that split into q8_0 blocks, and its tokenizer."""
    folder = tmp_path_factory.mktemp("llama")
    tiny_llama(folder, tied=True, intermediate=128)
    model, _ = jaxlm.load_pretrained(folder)
    return model, byte_level_tokenizer(smollm_digits=True)


def _transformers(path, **config):
    folder, name = os.path.split(path)
    return transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                             **config).eval()


def _logits(model, ids, mask):
    return np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))


@pytest.mark.parametrize("gguf_type", ["f32", "f16", "q8_0"])
def test_llama_export_gives_transformers_and_jaxlm_the_same_logits(llama, tmp_path, gguf_type):
    model, tokenizer = llama
    path = jaxlm.export_pretrained(model, tmp_path / "model.gguf", tokenizer, gguf_type=gguf_type)
    ids, mask = padded_batch(seed=3)
    real = mask.astype(bool)
    ours = _logits(model, ids, mask)
    theirs = torch_logits(_transformers(path), ids, mask)
    back, back_tokenizer = jaxlm.load_pretrained(path)
    # Both readers dequantise the same stored values: they agree to float rounding whatever the type.
    assert np.abs(_logits(back, ids, mask)[real] - theirs[real]).max() <= 1e-5
    # Against the float32 model, only the storage type's rounding remains.
    assert np.abs(ours[real] - theirs[real]).max() <= TOLERANCE[gguf_type]
    chat = [{"role": "user", "content": "What is the capital of France? 42"}]
    expected = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert back_tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                              return_dict=False) == expected


def test_q8_0_stores_matrices_in_q8_0_and_vectors_in_f32(llama, tmp_path):
    model, tokenizer = llama
    reader = gguf.GGUFReader(jaxlm.export_pretrained(model, tmp_path / "m.gguf", tokenizer, gguf_type="q8_0"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == types["blk.0.attn_q.weight"] == types["blk.1.ffn_down.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied, as in SmolLM2's own file
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0


def test_a_file_is_parsed_once_per_load_and_again_when_rewritten(llama, tmp_path):
    """Loading reads the config, then the tensors and tokenizer: one parse of the metadata (the slow part) for
    both; a file written again at the same path (another size or time) is read anew."""
    from jaxlm.hf import gguf as jaxlm_gguf

    model, tokenizer = llama
    path = jaxlm.export_pretrained(model, tmp_path / "m.gguf", tokenizer, gguf_type="f32")
    first = jaxlm_gguf._open(path)
    assert jaxlm_gguf._open(path) is first
    jaxlm.export_pretrained(model, tmp_path / "m.gguf", tokenizer, gguf_type="q8_0")
    again = jaxlm_gguf._open(path)
    assert again is not first and again.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads the process's mappings (Linux)")
def test_a_loaded_model_keeps_neither_the_reader_nor_the_mapped_file(llama, tmp_path):
    """Once the model is built, nothing of the file stays in memory: the kept reader (SmolLM2's metadata is ~0.2 GB of
    Python objects) is dropped, and float32 tensors are copied rather than aliased, so the file is unmapped."""
    import gc

    from jaxlm.hf import gguf as jaxlm_gguf

    model, tokenizer = llama
    path = str(jaxlm.export_pretrained(model, tmp_path / "mapped.gguf", tokenizer, gguf_type="f32"))
    back, _ = jaxlm.load_pretrained(path)
    gc.collect()
    assert jaxlm_gguf._reader.cache_info().currsize == 0
    with open("/proc/self/maps") as f:
        assert not [line for line in f if line.rstrip().endswith("mapped.gguf")]
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(nnx.state(back, nnx.Param)))  # alive, readable


def test_llama_metadata_is_what_llama_cpp_reads(llama, tmp_path):
    model, tokenizer = llama
    reader = gguf.GGUFReader(jaxlm.export_pretrained(model, tmp_path / "m.gguf", tokenizer, gguf_type="f16"))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    c = model.config
    assert meta["general.architecture"] == "llama"
    assert (meta["llama.context_length"], meta["llama.embedding_length"], meta["llama.block_count"],
            meta["llama.feed_forward_length"], meta["llama.attention.head_count"],
            meta["llama.attention.head_count_kv"], meta["llama.rope.dimension_count"], meta["llama.vocab_size"]) == (
        c.max_position_embeddings, c.hidden_size, c.num_hidden_layers, c.intermediate_size,
        c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.vocab_size)
    assert meta["llama.rope.freq_base"] == pytest.approx(c.rope_theta)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(c.rms_norm_eps)
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    vocab = tokenizer.get_vocab()
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert len(meta["tokenizer.ggml.tokens"]) == c.vocab_size  # padded with unused [PAD] tokens
    assert all(meta["tokenizer.ggml.tokens"][i] == t for t, i in vocab.items())
    types = meta["tokenizer.ggml.token_type"]
    assert types[vocab["<|im_start|>"]] == 3 and types[vocab["Ġ"]] == 1 and types[-1] == 5  # control, normal, unused
    assert len(meta["tokenizer.ggml.merges"]) == len(vocab) - 256 - 3
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"],
            meta["tokenizer.ggml.unknown_token_id"], meta["tokenizer.ggml.padding_token_id"]) == (1, 2, 0, 2)
    assert meta["tokenizer.ggml.add_bos_token"] is False and meta["tokenizer.ggml.add_eos_token"] is False
    assert meta["tokenizer.chat_template"] == CHATML


def test_llama_with_biases_and_linear_rope_scaling_round_trips(tmp_path):
    tiny_llama(tmp_path / "src", bias=True, intermediate=128, rope_scaling={"rope_type": "linear", "factor": 2.0})
    model, _ = jaxlm.load_pretrained(tmp_path / "src")
    path = jaxlm.export_pretrained(model, tmp_path / "m.gguf", byte_level_tokenizer(True), gguf_type="f32")
    reader = gguf.GGUFReader(path)
    assert reader.fields["llama.rope.scaling.type"].contents() == "linear"
    assert reader.fields["llama.rope.scaling.factor"].contents() == 2.0
    back, _ = jaxlm.load_pretrained(path)
    assert back.config.attention_bias
    np.testing.assert_allclose(back.config.inverse_frequencies, model.config.inverse_frequencies)
    ids, mask = padded_batch(seed=5)
    real = mask.astype(bool)
    assert np.abs(_logits(back, ids, mask)[real] - _logits(model, ids, mask)[real]).max() <= 1e-5


def test_gpt2_export_gives_transformers_and_jaxlm_the_same_logits(tmp_path):
    tiny_gpt2(tmp_path / "src")
    model, _ = jaxlm.load_pretrained(tmp_path / "src")
    tokenizer = byte_level_tokenizer(smollm_digits=False)
    path = jaxlm.export_pretrained(model, tmp_path / "gpt2.gguf", tokenizer, gguf_type="f32")
    reader = gguf.GGUFReader(path)
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert reader.fields["gpt2.context_length"].contents() == model.config.n_positions == 128
    ids, mask = padded_batch(seed=4)
    real = mask.astype(bool)
    ours = _logits(model, ids, mask)
    # transformers maps gpt2.context_length to `n_ctx`, which GPT2Config no longer reads: say it again.
    theirs = torch_logits(_transformers(path, n_positions=128), ids, mask)
    assert np.abs(theirs[real] - ours[real]).max() <= 1e-4
    back, _ = jaxlm.load_pretrained(path)
    assert np.abs(_logits(back, ids, mask)[real] - ours[real]).max() <= 1e-5


def test_lora_adapters_are_merged_into_the_export(llama, tmp_path):
    from jaxlm.models.lora import apply_lora, merge_lora

    model, tokenizer = llama
    adapted = nnx.clone(model)
    apply_lora(adapted, ["q", "v"], rank=4, alpha=8.0)
    for _, module in nnx.iter_modules(adapted):  # a non-zero update, so a dropped adapter would show
        if hasattr(module, "lora_b"):
            module.lora_b.set_value(0.05 * jnp.ones_like(module.lora_b[...]))
    back, _ = jaxlm.load_pretrained(jaxlm.export_pretrained(adapted, tmp_path / "m.gguf", tokenizer, gguf_type="f32"))
    ids, mask = padded_batch(seed=6)
    real = mask.astype(bool)
    assert np.abs(_logits(back, ids, mask)[real] - _logits(merge_lora(adapted), ids, mask)[real]).max() <= 1e-5


def test_unsupported_models_and_tokenizers_are_refused(llama, tmp_path, minilm_dir):
    model, tokenizer = llama
    with pytest.raises(ValueError, match="needs the tokenizer"):
        jaxlm.export_pretrained(model, tmp_path / "a.gguf", None)
    with pytest.raises(ValueError, match="q4_k"):
        jaxlm.export_pretrained(model, tmp_path / "b.gguf", tokenizer, gguf_type="q4_k")
    from jaxlm.models.prompt_tuning import apply_prompt_tuning

    tuned = nnx.clone(model)
    apply_prompt_tuning(tuned, 2)
    with pytest.raises(ValueError, match="no virtual tokens"):
        jaxlm.export_pretrained(tuned, tmp_path / "d.gguf", tokenizer)
    bert, bert_tokenizer = jaxlm.load_pretrained(minilm_dir)
    with pytest.raises(ValueError, match="GGUF export supports"):
        jaxlm.export_pretrained(bert, tmp_path / "c.gguf", bert_tokenizer)
    assert not any(p.suffix == ".gguf" for p in tmp_path.iterdir())


# llama.cpp's architecture name, a tensor only that family has, and what transformers' GGUF loader
# must be told: it does not read Qwen3's head size (attention.key_length) and assumes 128, the
# head size of every released Qwen3, so this 32-wide one is passed explicitly. For Gemma it reads
# neither query_pre_attn_scalar nor the soft-caps nor which layers slide nor Gemma 3's local RoPE base
# and global scaling (it takes its defaults: the released models'). The scalar is head_dim here, as
# llama.cpp derives it from the shape.
_GEMMA3_ROPE = {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}
FAMILY_GGUF = {
    "qwen2": (tiny_qwen2, "blk.1.attn_v.bias", {}),
    "qwen3": (tiny_qwen3, "blk.1.attn_k_norm.weight", {"head_dim": 32}),
    "gemma2": (lambda path: tiny_gemma2(path, query_pre_attn_scalar=16), "blk.1.post_ffw_norm.weight",
               {"query_pre_attn_scalar": 16, "attn_logit_softcapping": 0.1, "final_logit_softcapping": 0.3}),
    "gemma3": (lambda path: tiny_gemma3(path, query_pre_attn_scalar=16), "blk.2.attn_q_norm.weight",
               {"query_pre_attn_scalar": 16, "rope_parameters": _GEMMA3_ROPE,
                "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}),
}


def _exported_f32(write, tmp_path):
    """A tiny checkpoint from `write`, loaded and exported to f32 GGUF: (model, the file's path, its reader)."""
    write(tmp_path / "hf")
    model, _ = jaxlm.load_pretrained(tmp_path / "hf")
    path = jaxlm.export_pretrained(model, tmp_path / "m.gguf", byte_level_tokenizer(False), gguf_type="f32")
    return model, path, gguf.GGUFReader(path)


@pytest.mark.parametrize("family", sorted(FAMILY_GGUF))
def test_family_export_reads_back_in_transformers_and_jaxlm_with_the_same_logits(tmp_path, family):
    write, own_tensor, transformers_needs = FAMILY_GGUF[family]
    model, path, reader = _exported_f32(write, tmp_path)
    assert reader.fields["general.architecture"].contents() == family
    assert own_tensor in {t.name for t in reader.tensors}
    ids, mask = padded_batch(seed=6)
    real = mask.astype(bool)
    ours = _logits(model, ids, mask)
    back, _ = jaxlm.load_pretrained(path)
    assert type(back) is type(model)
    np.testing.assert_array_equal(_logits(back, ids, mask)[real], ours[real])
    theirs = torch_logits(_transformers(path, **transformers_needs), ids, mask)
    assert np.abs(ours[real] - theirs[real]).max() <= TOLERANCE["f32"]


# Mixtures of experts: (checkpoint, llama.cpp's architecture, what transformers' GGUF loader must be told, or
# None where it cannot read the file). It reads qwen3moe but not the experts' size (expert_feed_forward_length);
# a "llama" file it reads as Llama, experts dropped.
MOE_GGUF = {
    "qwen3_moe": (tiny_qwen3_moe, "qwen3moe", {"moe_intermediate_size": 32}),
    "mixtral": (tiny_mixtral, "llama", None),
}


@pytest.mark.parametrize("family", sorted(MOE_GGUF))
def test_moe_export_stacks_each_layers_experts_and_reads_back_with_the_same_logits(tmp_path, family):
    write, arch, transformers_needs = MOE_GGUF[family]
    model, path, reader = _exported_f32(write, tmp_path)
    c = model.config
    assert reader.fields["general.architecture"].contents() == arch
    assert reader.fields[f"{arch}.expert_count"].contents() == c.num_experts
    assert reader.fields[f"{arch}.expert_used_count"].contents() == c.num_experts_per_tok
    size_key = "expert_feed_forward_length" if arch == "qwen3moe" else "feed_forward_length"
    assert reader.fields[f"{arch}.{size_key}"].contents() == c.expert_size
    data = {t.name: t.data for t in reader.tensors}  # numpy order: [experts, out, in] as llama.cpp stacks them
    experts, hidden, size = c.num_experts, c.hidden_size, c.expert_size
    assert data["blk.1.ffn_gate_inp.weight"].shape == (experts, hidden)
    assert data["blk.1.ffn_gate_exps.weight"].shape == data["blk.1.ffn_up_exps.weight"].shape == (experts, size, hidden)
    assert data["blk.1.ffn_down_exps.weight"].shape == (experts, hidden, size)
    ours = getattr(model.layers[1], c.moe_attribute).experts  # [experts, in, out]: each slice is HF's transposed
    for gguf_proj, proj in zip(("gate", "up", "down"), c.expert_names, strict=True):
        np.testing.assert_array_equal(data[f"blk.1.ffn_{gguf_proj}_exps.weight"],
                                      np.swapaxes(np.asarray(getattr(ours, proj)[...]), 1, 2))
    assert not any(".ffn_up." in name or ".experts." in name for name in data)
    # Read back: the same parameters and routing, so the same computation (logits compared below where
    # transformers reads the file too; they cost a compilation per model).
    back, _ = jaxlm.load_pretrained(path)
    assert type(back) is type(model)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(back, nnx.Param), nnx.state(model, nnx.Param))
    routing = ("num_experts", "num_experts_per_tok", "expert_size", "norm_topk_prob", "mlp_only_layers")
    assert [getattr(back.config, f, None) for f in routing] == [getattr(c, f, None) for f in routing]
    if transformers_needs is not None:
        ids, mask = padded_batch(seed=6)
        real = mask.astype(bool)
        graphdef, state = nnx.split(back)  # compiled: an MoE layer's many small ops are slow one by one
        ours = np.asarray(jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))(state, ids, mask))
        theirs = torch_logits(_transformers(path, **transformers_needs), ids, mask)
        assert np.abs(ours[real] - theirs[real]).max() <= TOLERANCE["f32"]


def test_a_qwen3_moe_with_dense_layers_or_unnormalised_routing_is_refused(tmp_path):
    from jaxlm.hf.gguf_export import write_gguf
    from jaxlm.models.qwen3_moe import Qwen3MoeConfig

    config = Qwen3MoeConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_experts=4, expert_size=16)
    tokenizer = byte_level_tokenizer(False)
    for change, message in (({"mlp_only_layers": (1,)}, r"layers \[1\] are dense; llama.cpp's qwen3moe"),
                            ({"norm_topk_prob": False}, "norm_topk_prob=false: llama.cpp's qwen3moe renormalises")):
        with pytest.raises(UserError, match=message):  # refused from the config, before any tensor is written
            write_gguf(str(tmp_path / "m.gguf"), {}, dataclasses.replace(config, **change), "qwen3_moe", tokenizer)
    assert not (tmp_path / "m.gguf").exists()


# transformers' GGUF loader reads a phi3 file's fused tensors, but neither longrope's factor tensors nor
# rope.dimension_count (a partial rotary factor): such files read back in jaxlm only.
PHI3_GGUF = {"plain": {}, "longrope_partial_tied": dict(longrope=True, partial_rotary=0.75, tied=True)}


@pytest.mark.parametrize("variant", sorted(PHI3_GGUF))
def test_phi3_export_keeps_the_fused_tensors_and_reads_back_with_the_same_logits(tmp_path, variant):
    options = PHI3_GGUF[variant]
    tiny_phi3(tmp_path / "hf", **options)
    model, _ = jaxlm.load_pretrained(tmp_path / "hf")
    path = jaxlm.export_pretrained(model, tmp_path / "m.gguf", byte_level_tokenizer(False), gguf_type="f32")
    reader = gguf.GGUFReader(path)
    names = {t.name for t in reader.tensors}
    assert reader.fields["general.architecture"].contents() == "phi3"
    assert {"blk.1.attn_qkv.weight", "blk.1.ffn_up.weight"} <= names and "blk.1.attn_q.weight" not in names
    assert reader.fields["phi3.rope.dimension_count"].contents() == model.config.rotary_dim
    assert ("rope_factors_long.weight" in names) == bool(options)
    ids, mask = padded_batch(seed=6)  # 11 positions: past longrope's 8 original ones, so its long factors
    real = mask.astype(bool)
    ours = _logits(model, ids, mask)
    back, _ = jaxlm.load_pretrained(path)
    assert back.config.rotary_dim == model.config.rotary_dim
    assert back.config.rope_attention_factor == pytest.approx(model.config.rope_attention_factor, rel=1e-7)
    assert np.abs(_logits(back, ids, mask)[real] - ours[real]).max() <= 1e-5
    if not options:
        theirs = torch_logits(_transformers(path), ids, mask)
        assert np.abs(ours[real] - theirs[real]).max() <= TOLERANCE["f32"]


@pytest.mark.slow
def test_smollm2_tokenizer_metadata_matches_the_shipped_file(smollm2_gguf, tmp_path):
    """Our tokenizer half, written from the tokenizer jaxlm reads out of the shipped SmolLM2 GGUF, is that file's."""
    from jaxlm.hf.gguf import tokenizer as gguf_tokenizer
    from jaxlm.models import LlamaConfig, LlamaForCausalLM

    shipped = gguf.GGUFReader(smollm2_gguf)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True)
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(0))
    ours = gguf.GGUFReader(jaxlm.export_pretrained(model, tmp_path / "m.gguf", gguf_tokenizer(shipped, smollm2_gguf)))
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template"):
        assert ours.fields[key].contents() == shipped.fields[key].contents(), key


def test_a_gemma_attention_scale_llama_cpp_cannot_express_is_refused(tmp_path):
    tiny_gemma2(tmp_path / "hf")  # query_pre_attn_scalar 24; llama.cpp would scale by head_dim 16
    model, _ = jaxlm.load_pretrained(tmp_path / "hf")
    with pytest.raises(UserError, match=r"query_pre_attn_scalar=24: llama.cpp's gemma2 scales attention by 16"):
        jaxlm.export_pretrained(model, tmp_path / "m.gguf", byte_level_tokenizer(False))
    assert not (tmp_path / "m.gguf").exists()
