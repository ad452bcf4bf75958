"""`write_gguf`: a causal LM as one GGUF file that llama.cpp, Ollama and LM Studio run.

`export_pretrained(model, "model.gguf", tokenizer, gguf_type=...)` calls it with the model's
tensors under their Hugging Face names (LoRA merged, int8 dequantised).

The file holds what llama.cpp's own converter (convert_hf_to_gguf.py) writes: the architecture's
hyperparameters under llama.cpp's key names, the tensors under llama.cpp's names and layouts
(Llama's Q/K rows permuted for its interleaved RoPE, GPT-2's Conv1D weights transposed), the
tokenizer (tokens, types, merges, special ids, the pre-tokenizer's name) and the chat template,
so that a chat runs from the file alone.

Types, as llama.cpp's converter chooses them: "f32" writes everything in float32; "f16" the
matrices in float16; "q8_0" the matrices in blocks of 32 int8 values with one float16 scale
(a matrix whose rows do not split into such blocks falls back to float16). Vectors (norms,
biases) and GPT-2's position table stay float32.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np

from jaxlm.errors import UserError
from jaxlm.hf.gguf import GPT2_NAMES, LLAMA_NAMES, QWEN_NAMES
from jaxlm.hf.gguf_vocab import add_tokenizer
from jaxlm.models.weight_map import rename

GGUF_TYPES = ("f32", "f16", "q8_0")


def write_gguf(path: str, hf_tensors: dict, config, model_type: str, tokenizer, gguf_type: str = "f16",
               *, name: str | None = None) -> str:
    """Write a model given as (HF name -> array) tensors, its config and tokenizer to `path`.

    `gguf_type` is "f32", "f16" or "q8_0". `name` is the model name in the metadata (default: the
    file name). A tokenizer is required: llama.cpp has no other source for it.
    """
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise UserError(f"GGUF type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    if tokenizer is None:
        raise UserError(f"{path}: a GGUF file needs the tokenizer; this model has none")
    if model_type not in _FAMILIES:
        raise UserError(f"{path}: GGUF export supports {', '.join(_FAMILIES)} models, not {model_type}")
    gguf_arch, write_metadata, gguf_tensors = _FAMILIES[model_type]
    hf_tensors = {k: np.asarray(v, np.float32) for k, v in hf_tensors.items()}

    writer = gguf.GGUFWriter(path, gguf_arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or os.path.splitext(os.path.basename(path))[0])
    writer.add_file_type(_FILE_TYPES[gguf_type](gguf))
    write_metadata(writer, config)
    add_tokenizer(writer, tokenizer, config)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for tensor_name, array in gguf_tensors(hf_tensors, config):
        data, qtype = _encode(tensor_name, array, gguf_type)
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


_FILE_TYPES = {
    "f32": lambda gguf: gguf.LlamaFileType.ALL_F32,
    "f16": lambda gguf: gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": lambda gguf: gguf.LlamaFileType.MOSTLY_Q8_0,
}
# llama.cpp keeps these float32 whatever the file type (its converter and its quantizer agree).
_ALWAYS_F32 = ("position_embd.weight", "rope_freqs.weight")


def _encode(name: str, array: np.ndarray, gguf_type: str):
    """(data, GGML type) for one tensor: vectors and a few tables stay float32."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import QuantError, quantize

    if array.ndim < 2 or name in _ALWAYS_F32 or gguf_type == "f32":
        return np.ascontiguousarray(array, np.float32), T.F32
    if gguf_type == "q8_0":
        try:
            return quantize(np.ascontiguousarray(array, np.float32), T.Q8_0), T.Q8_0
        except QuantError:  # rows not a multiple of the 32-value block: as llama.cpp's converter does
            pass
    return np.ascontiguousarray(array, np.float16), T.F16


# --- Llama ---------------------------------------------------------------------------------


def _llama_metadata(writer, c) -> None:
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


def _llama_tensors(hf: dict[str, np.ndarray], c, names=LLAMA_NAMES, permute_qk: bool = True):
    scaling = dict(c.rope_scaling or {})
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        yield "rope_freqs.weight", _llama3_rope_factors(c, scaling)
    for hf_name, array in hf.items():
        gguf_name = _gguf_name(hf_name, names)
        if ".attn_q." in gguf_name and permute_qk:
            array = _permute(array, c.num_attention_heads)
        elif ".attn_k." in gguf_name and permute_qk:
            array = _permute(array, c.num_key_value_heads)
        yield gguf_name, array


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half row order -> llama.cpp's interleaved pairs (the inverse of the loader's unpermute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


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


# --- GPT-2 ---------------------------------------------------------------------------------


def _gpt2_metadata(writer, c) -> None:
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh") or c.scale_attn_by_inverse_layer_idx \
            or not c.scale_attn_weights:
        raise UserError("llama.cpp's GPT-2 has tanh-GELU and 1/sqrt(head_dim) attention only; this config differs")
    writer.add_context_length(c.n_positions)
    writer.add_embedding_length(c.n_embd)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(c.n_inner or 4 * c.n_embd)
    writer.add_head_count(c.n_head)
    writer.add_layer_norm_eps(c.layer_norm_epsilon)


def _gpt2_tensors(hf: dict[str, np.ndarray], c):
    del c
    for hf_name, array in hf.items():
        gguf_name = _gguf_name(hf_name, GPT2_NAMES)
        if gguf_name.endswith(("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")):
            array = array.T  # Conv1D [in, out] -> [out, in]
        yield gguf_name, array
        if gguf_name == "token_embd.weight":  # llama.cpp's converter writes the tied head out as well
            yield "output.weight", array


def _gguf_name(hf_name: str, table) -> str:
    for gguf_template, hf_template in table:
        found = rename(hf_name, hf_template, gguf_template)
        if found:
            return found
    raise UserError(f"tensor {hf_name!r} has no GGUF name")


# model_type -> (llama.cpp architecture, metadata writer, tensors). Mistral (without a sliding
# window, the only kind jaxlm runs) is Llama's computation: llama.cpp's converter writes it so too.
# llama.cpp runs Qwen with HF's rotate-half RoPE: their Q/K rows go unpermuted.
_qwen_tensors = functools.partial(_llama_tensors, names=QWEN_NAMES, permute_qk=False)
_FAMILIES = {
    "llama": ("llama", _llama_metadata, _llama_tensors),
    "mistral": ("llama", _llama_metadata, _llama_tensors),
    "qwen2": ("qwen2", _llama_metadata, _qwen_tensors),
    "qwen3": ("qwen3", _llama_metadata, _qwen_tensors),
    "gpt2": ("gpt2", _gpt2_metadata, _gpt2_tensors),
}
