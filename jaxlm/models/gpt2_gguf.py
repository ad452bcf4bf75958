"""The GPT-2 family in a GGUF file (llama.cpp's "gpt2" architecture): tensor names, metadata keys, and
the Conv1D weights, which HF stores [in, out] and llama.cpp [out, in]. The head is tied to the token
table: llama.cpp's converter writes a copy (`output.weight`), which reading skips. The registry row's
`gguf` (`LAYOUT`) is all hf/gguf.py and hf/gguf_export.py see.
"""

from __future__ import annotations

import numpy as np

from jaxlm.errors import UserError
from jaxlm.models.weight_map import GGUFLayout, gguf_name

# GGUF tensor name -> HF tensor name ({p} is "weight" or "bias").
NAMES = (
    ("token_embd.weight", "transformer.wte.weight"),
    ("position_embd.weight", "transformer.wpe.weight"),
    ("output_norm.{p}", "transformer.ln_f.{p}"),
    ("blk.{i}.attn_norm.{p}", "transformer.h.{i}.ln_1.{p}"),
    ("blk.{i}.attn_qkv.{p}", "transformer.h.{i}.attn.c_attn.{p}"),
    ("blk.{i}.attn_output.{p}", "transformer.h.{i}.attn.c_proj.{p}"),
    ("blk.{i}.ffn_norm.{p}", "transformer.h.{i}.ln_2.{p}"),
    ("blk.{i}.ffn_up.{p}", "transformer.h.{i}.mlp.c_fc.{p}"),
    ("blk.{i}.ffn_down.{p}", "transformer.h.{i}.mlp.c_proj.{p}"),
)
_TRANSPOSED = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")  # Conv1D


def hf_config(get, vocab, names) -> dict:
    del names
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": vocab,
        "n_embd": int(get("embedding_length")),
        "n_inner": int(get("feed_forward_length")),
        "n_layer": int(get("block_count")),
        "n_head": int(get("attention.head_count")),
        "n_positions": int(get("context_length")),
        "layer_norm_epsilon": float(get("attention.layer_norm_epsilon")),
    }


def from_gguf(name: str, w: np.ndarray, config: dict) -> np.ndarray:
    del config
    return w.T if name.endswith(_TRANSPOSED) else w


def write_metadata(writer, c) -> None:
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh") or c.scale_attn_by_inverse_layer_idx \
            or not c.scale_attn_weights:
        raise UserError("llama.cpp's GPT-2 has tanh-GELU and 1/sqrt(head_dim) attention only; this config differs")
    writer.add_context_length(c.n_positions)
    writer.add_embedding_length(c.n_embd)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(c.n_inner or 4 * c.n_embd)
    writer.add_head_count(c.n_head)
    writer.add_layer_norm_eps(c.layer_norm_epsilon)


def to_gguf(hf: dict[str, np.ndarray], c):
    del c
    for hf_name, array in hf.items():
        name = gguf_name(hf_name, NAMES)
        if name.endswith(_TRANSPOSED):
            array = array.T  # Conv1D [in, out] -> [out, in]
        yield name, array
        if name == "token_embd.weight":  # llama.cpp's converter writes the tied head out as well
            yield "output.weight", array


def sizes(arch: str, vocab_key: str, c: dict) -> list[tuple[str, int, str, int]]:
    """(metadata key, the size it gives, a tensor that has that size, on which axis in numpy order)."""
    return [
        (vocab_key, c["vocab_size"], "token_embd.weight", 0),
        (f"{arch}.embedding_length", c["n_embd"], "token_embd.weight", 1),
        (f"{arch}.feed_forward_length", c["n_inner"], "blk.0.ffn_up.weight", 0),
        (f"{arch}.context_length", c["n_positions"], "position_embd.weight", 0),
    ]


LAYOUT = GGUFLayout("gpt2", NAMES, ("output.weight",), hf_config, from_gguf, write_metadata, to_gguf, sizes)
