"""The Phi-3 family in a GGUF file (llama.cpp's "phi3" architecture), as llama.cpp's converter writes it.

HF's fused tensors stay fused: `attn_qkv` is `qkv_proj` and `ffn_up` is `gate_up_proj` (gate rows, then
up rows); Q and K rows keep HF's order (llama.cpp runs Phi-3 with rotate-half RoPE, as HF does).
`rope.dimension_count` is the number of rotary dims (`partial_rotary_factor` of the head size, which
llama.cpp takes as embedding_length / head_count), `attention.sliding_window` 0 means none, and longrope
travels as two factor tensors (`rope_factors_short/long.weight`) with the attention factor and the
original context length in the metadata. The registry row's `gguf` (`LAYOUT`) is all hf/gguf.py and
hf/gguf_export.py see.
"""

from __future__ import annotations

import numpy as np

from jaxlm.errors import UserError
from jaxlm.models import llama_gguf
from jaxlm.models.weight_map import GGUFLayout, gguf_name

# GGUF tensor name -> HF tensor name: Llama's embeddings, norms and output, then Phi-3's fused projections.
NAMES = (
    *llama_gguf.NAMES[:5],
    ("blk.{i}.attn_qkv.weight", "model.layers.{i}.self_attn.qkv_proj.weight"),
    ("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.gate_up_proj.weight"),
    ("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight"),
)
# longrope's factor tensors -> their rope_scaling keys (read into the config, not loaded as parameters)
ROPE_FACTORS = {"rope_factors_short.weight": "short_factor", "rope_factors_long.weight": "long_factor"}


def hf_config(get, vocab, tensors) -> dict:
    config = llama_gguf.hf_config(get, vocab, tensors)
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    config.update(
        model_type="phi3",
        architectures=["Phi3ForCausalLM"],
        head_dim=head_dim,
        partial_rotary_factor=int(get("rope.dimension_count", head_dim)) / head_dim,
        original_max_position_embeddings=int(get("rope.scaling.original_context_length",
                                                 config["max_position_embeddings"])),
        sliding_window=int(get("attention.sliding_window", 0)) or None,
    )
    if all(name in tensors for name in ROPE_FACTORS):
        config["rope_scaling"] = {
            "rope_type": "longrope",
            "attention_factor": float(get("rope.scaling.attn_factor", 1.0)),
            **{key: np.asarray(tensors[name], np.float32).tolist() for name, key in ROPE_FACTORS.items()},
        }
    return config


def from_gguf(name: str, w: np.ndarray, config: dict) -> np.ndarray:
    del name, config  # every tensor is in HF's layout already
    return w


def write_metadata(writer, c) -> None:
    if c.head_dim * c.num_attention_heads != c.hidden_size:
        raise UserError(f"head_dim={c.head_dim}: llama.cpp's phi3 takes the head size as hidden_size / "
                        f"num_attention_heads ({c.hidden_size // c.num_attention_heads}): this model has no GGUF form")
    writer.add_vocab_size(c.vocab_size)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_rope_scaling_orig_ctx_len(c.original_max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_dimension_count(c.rotary_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_sliding_window(c.sliding_window or 0)  # 0: none (Phi-4), as llama.cpp's converter writes it
    if c.rope_scaling is not None:
        writer.add_rope_scaling_attn_factors(c.rope_attention_factor)


def to_gguf(hf: dict[str, np.ndarray], c):
    scaling = dict(c.rope_scaling or ())
    if scaling:
        for name, key in ROPE_FACTORS.items():
            yield name, np.asarray(scaling[key], np.float32)
    for hf_name, array in hf.items():
        yield gguf_name(hf_name, NAMES), array


def sizes(arch: str, vocab_key: str, c: dict) -> list[tuple[str, int, str, int]]:
    """(metadata key, the size it gives, a tensor that has that size, on which axis in numpy order)."""
    head = c["hidden_size"] // c["num_attention_heads"]
    return [
        (vocab_key, c["vocab_size"], "token_embd.weight", 0),
        (f"{arch}.embedding_length", c["hidden_size"], "token_embd.weight", 1),
        (f"{arch}.feed_forward_length x 2 (gate and up)", 2 * c["intermediate_size"], "blk.0.ffn_up.weight", 0),
        (f"{arch}.attention.head_count + 2 x head_count_kv, x head size",
         (c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * head, "blk.0.attn_qkv.weight", 0),
    ]


LAYOUT = GGUFLayout("phi3", NAMES, tuple(ROPE_FACTORS), hf_config, from_gguf, write_metadata, to_gguf, sizes)
