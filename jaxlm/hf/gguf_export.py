"""`write_gguf`: a causal LM as one GGUF file that llama.cpp, Ollama and LM Studio run.

`export_pretrained(model, "model.gguf", tokenizer, gguf_type=...)` calls it with the model's
tensors under their Hugging Face names (LoRA merged, int8 dequantised).

The file holds what llama.cpp's own converter (convert_hf_to_gguf.py) writes: the architecture's
hyperparameters under llama.cpp's key names, the tensors under llama.cpp's names and layouts (both
from the family's registry row, `Family.gguf`: e.g. Q/K rows permuted for llama.cpp's RoPE), the
tokenizer (tokens, types, merges, special ids, the pre-tokenizer's name) and the chat template,
so that a chat runs from the file alone.

Types, as llama.cpp's converter chooses them: "f32" writes everything in float32; "f16" the
matrices in float16; "q8_0" the matrices in blocks of 32 int8 values with one float16 scale
(a matrix whose rows do not split into such blocks falls back to float16). Vectors (norms,
biases) and GPT-2's position table stay float32.
"""

from __future__ import annotations

import os

import numpy as np

from jaxlm.errors import UserError
from jaxlm.hf.gguf_vocab import add_tokenizer
from jaxlm.models.registry import FAMILIES

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
    layout = FAMILIES[model_type].gguf if model_type in FAMILIES else None
    if layout is None:
        supported = ", ".join(t for t, f in FAMILIES.items() if f.gguf is not None)
        raise UserError(f"{path}: GGUF export supports {supported} models, not {model_type}")
    hf_tensors = {k: np.asarray(v, np.float32) for k, v in hf_tensors.items()}

    writer = gguf.GGUFWriter(path, layout.arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or os.path.splitext(os.path.basename(path))[0])
    writer.add_file_type(_FILE_TYPES[gguf_type](gguf))
    layout.write_metadata(writer, config)
    add_tokenizer(writer, tokenizer, config)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for tensor_name, array in layout.to_gguf(hf_tensors, config):
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
