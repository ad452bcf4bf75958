"""Gemma 2 and Gemma 3 in a GGUF file (llama.cpp's "gemma2" and "gemma3" architectures).

Llama's tensors (models/llama_gguf.py) with Gemma's four norms a layer (`attn_norm`,
`post_attention_norm`, `ffn_norm` before the MLP, `post_ffw_norm`) and Gemma 3's `attn_q_norm` /
`attn_k_norm`; no Q/K permutation (llama.cpp runs Gemma with rotate-half RoPE, as HF does). llama.cpp
stores the norms as the factor they scale by, 1 + weight (its converter adds 1; transformers' GGUF
loader subtracts it). llama.cpp derives the attention scale, rather than reading `query_pre_attn_scalar`:
head_dim, or hidden / heads for the 27B shapes; a model whose scalar is neither is refused on export.
The soft-caps and the window travel as llama.cpp's keys; which layers slide as
`attention.sliding_window_pattern` and Gemma 3's local RoPE base as `rope.freq_base_swa` (gguf's own keys:
files without them get the family's pattern and base).
"""

from __future__ import annotations

import numpy as np

from jaxlm.errors import UserError
from jaxlm.models import llama_gguf
from jaxlm.models.weight_map import GGUFLayout

_NORMS = (
    ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("blk.{i}.post_attention_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("blk.{i}.ffn_norm.weight", "model.layers.{i}.pre_feedforward_layernorm.weight"),
    ("blk.{i}.post_ffw_norm.weight", "model.layers.{i}.post_feedforward_layernorm.weight"),
    ("blk.{i}.attn_q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight"),
    ("blk.{i}.attn_k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight"),
)
# GGUF tensor name -> HF tensor name: Llama's, with Gemma's norms in place of Llama's two.
NAMES = (*(row for row in llama_gguf.NAMES if not row[0].endswith("norm.weight") or row[0] == "output_norm.weight"),
         *_NORMS)
# Layer counts of the 27B models, whose attention scale llama.cpp takes from hidden / heads.
_SCALE_BY_WIDTH = {"gemma2": 46, "gemma3": 62}
_DEFAULT_PATTERN = {"gemma2": 2, "gemma3": 6}  # what llama.cpp assumes: every n-th layer is global


def _llama_cpp_scalar(arch: str, layers: int, hidden: int, heads: int, head_dim: int) -> int:
    return hidden // heads if layers == _SCALE_BY_WIDTH[arch] else head_dim


def _hf_config(arch: str, model_type: str, architecture: str):
    def hf_config(get, vocab, names) -> dict:
        config = llama_gguf.hf_config(get, vocab, names)
        config["head_dim"] = int(get("attention.key_length", config["head_dim"]))
        count = config["num_hidden_layers"]
        sliding = get("attention.sliding_window_pattern", [(i + 1) % _DEFAULT_PATTERN[arch] != 0 for i in range(count)])
        config.update(
            model_type=model_type, architectures=[architecture], hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings="output.weight" not in names,
            layer_types=["sliding_attention" if s else "full_attention" for s in sliding],
            sliding_window=int(get("attention.sliding_window")) if get("attention.sliding_window", -1) != -1 else None,
            attn_logit_softcapping=_float_or_none(get("attn_logit_softcapping", -1.0)),
            final_logit_softcapping=_float_or_none(get("final_logit_softcapping", -1.0)),
            query_pre_attn_scalar=_llama_cpp_scalar(arch, count, config["hidden_size"],
                                                    config["num_attention_heads"], config["head_dim"]),
        )
        if arch == "gemma3":
            config["rope_local_base_freq"] = float(get("rope.freq_base_swa", 10000.0))
        return config

    return hf_config


def _float_or_none(value) -> float | None:
    return None if float(value) == -1.0 else float(value)


def _is_norm(name: str) -> bool:
    return name.endswith("norm.weight")


def from_gguf(name: str, w: np.ndarray, config: dict) -> np.ndarray:
    del config
    return w - 1 if _is_norm(name) else w  # llama.cpp's 1 + weight back to HF's offset


def _write_metadata(arch: str):
    def write_metadata(writer, c) -> None:
        llama_gguf.write_metadata(writer, c)
        scalar = _llama_cpp_scalar(arch, c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.head_dim)
        if c.query_pre_attn_scalar != scalar:
            raise UserError(f"query_pre_attn_scalar={c.query_pre_attn_scalar}: llama.cpp's {arch} scales attention by "
                            f"{scalar} ** -0.5 for this shape and has no key for another scale")
        if c.attn_logit_softcapping is not None:
            writer.add_attn_logit_softcapping(c.attn_logit_softcapping)
        if c.final_logit_softcapping is not None:
            writer.add_final_logit_softcapping(c.final_logit_softcapping)
        if c.sliding_window is not None:
            writer.add_sliding_window(c.sliding_window)
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in c.layer_types])
        if arch == "gemma3":
            writer.add_rope_freq_base_swa(c.rope_local_base_freq)

    return write_metadata


def to_gguf(hf: dict[str, np.ndarray], c):
    for name, array in llama_gguf.to_gguf(hf, c, names=NAMES, permute_qk=False):
        yield name, (array + 1 if _is_norm(name) else array)


def _layout(arch: str, model_type: str, architecture: str) -> GGUFLayout:
    return GGUFLayout(arch, NAMES, ("rope_freqs.weight",), _hf_config(arch, model_type, architecture), from_gguf,
                      _write_metadata(arch), to_gguf, llama_gguf.sizes)


GEMMA2 = _layout("gemma2", "gemma2", "Gemma2ForCausalLM")
GEMMA3 = _layout("gemma3", "gemma3_text", "Gemma3ForCausalLM")
