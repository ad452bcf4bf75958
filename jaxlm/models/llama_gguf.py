"""The Llama family in a GGUF file (llama.cpp's "llama" architecture): tensor names, metadata keys,
and the rows of Q and K, which llama.cpp permutes for its interleaved RoPE. Llama 3.1's RoPE scaling
travels as llama.cpp's `rope_freqs` tensor, whose factors we derive from the config when writing and
ignore when reading. The registry row's `gguf` (`LAYOUT`) is all hf/gguf.py and hf/gguf_export.py see.
"""

from __future__ import annotations

import math

import numpy as np

from jaxlm.errors import UserError
from jaxlm.models.weight_map import GGUFLayout, gguf_tensors

# GGUF tensor name -> HF tensor name ({p} is "weight" or "bias").
NAMES = (
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
    ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("blk.{i}.attn_q.{p}", "model.layers.{i}.self_attn.q_proj.{p}"),
    ("blk.{i}.attn_k.{p}", "model.layers.{i}.self_attn.k_proj.{p}"),
    ("blk.{i}.attn_v.{p}", "model.layers.{i}.self_attn.v_proj.{p}"),
    ("blk.{i}.attn_output.{p}", "model.layers.{i}.self_attn.o_proj.{p}"),
    ("blk.{i}.ffn_gate.{p}", "model.layers.{i}.mlp.gate_proj.{p}"),
    ("blk.{i}.ffn_up.{p}", "model.layers.{i}.mlp.up_proj.{p}"),
    ("blk.{i}.ffn_down.{p}", "model.layers.{i}.mlp.down_proj.{p}"),
)


def hf_config(get, vocab, names) -> dict:
    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": int(get("vocab_size", vocab)),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": int(get("rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": "blk.0.ffn_up.bias" in names,
    }
    experts = int(get("expert_count", 0))
    if experts:  # llama.cpp's converter writes Mixtral as "llama" with experts (models/moe_gguf.py)
        config.update(model_type="mixtral", architectures=["MixtralForCausalLM"], num_local_experts=experts,
                      num_experts_per_tok=int(get("expert_used_count")))
    if get("rope.scaling.type", "none") == "linear":
        config["rope_scaling"] = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    return config


def from_gguf(name: str, w: np.ndarray, config: dict) -> np.ndarray:
    if ".attn_q." in name:
        return _unpermute(w, config["num_attention_heads"])
    if ".attn_k." in name:
        return _unpermute(w, config["num_key_value_heads"])
    return w


def write_metadata(writer, c) -> None:
    writer.add_vocab_size(c.vocab_size)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    scaling = dict(c.rope_scaling or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        from gguf import RopeScalingType

        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    elif kind not in ("default", "llama3"):  # llama3 travels as the rope_freqs tensor
        raise UserError(f"rope_scaling type {kind!r} has no GGUF form here (supported: default, linear, llama3)")


def to_gguf(hf: dict[str, np.ndarray], c, names=NAMES, permute_qk: bool = True):
    """`names` and `permute_qk`: for the families that are Llama's computation under other GGUF names
    (models/qwen_gguf.py, whose Q and K rows llama.cpp takes in HF's order)."""
    scaling = dict(c.rope_scaling or {})
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        yield "rope_freqs.weight", _llama3_rope_factors(c, scaling)
    for name, array in gguf_tensors(hf, names):
        if ".attn_q." in name and permute_qk:
            array = _permute(array, c.num_attention_heads)
        elif ".attn_k." in name and permute_qk:
            array = _permute(array, c.num_key_value_heads)
        yield name, array


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half row order -> llama.cpp's interleaved pairs (the inverse of `_unpermute`)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(c, scaling: dict) -> np.ndarray:
    """What llama.cpp divides each RoPE frequency by, for Llama 3.1's frequency-dependent scaling."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    factors = []
    for i in range(0, c.head_dim, 2):
        wavelen = 2 * math.pi * c.rope_theta ** (i / c.head_dim)
        if wavelen < old_len / high:
            factors.append(1.0)
        elif wavelen > old_len / low:
            factors.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, np.float32)


def sizes(arch: str, vocab_key: str, c: dict) -> list[tuple[str, int, str, int]]:
    """(metadata key, the size it gives, a tensor that has that size, on which axis in numpy order)."""
    return [
        (vocab_key, c["vocab_size"], "token_embd.weight", 0),
        (f"{arch}.embedding_length", c["hidden_size"], "token_embd.weight", 1),
        (f"{arch}.feed_forward_length", c["intermediate_size"], "blk.0.ffn_up.weight", 0),
        (f"{arch}.attention.head_count x head size", c["num_attention_heads"] * c["head_dim"],
         "blk.0.attn_q.weight", 0),
        (f"{arch}.attention.head_count_kv x head size", c["num_key_value_heads"] * c["head_dim"],
         "blk.0.attn_k.weight", 0),
    ]


# rope_freqs: llama.cpp's precomputed RoPE factors (we derive them from the config).
LAYOUT = GGUFLayout("llama", NAMES, ("rope_freqs.weight",), hf_config, from_gguf, write_metadata, to_gguf, sizes)
