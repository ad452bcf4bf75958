"""`export_pretrained`: write a jaxlm model as a Hugging Face folder that transformers loads."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.errors import UserError
from jaxlm.hf.gguf_export import write_gguf
from jaxlm.models import architecture_of
from jaxlm.models.contract import unrolled
from jaxlm.models.lora import has_lora, merge_lora
from jaxlm.models.prompt_tuning import num_virtual_tokens
from jaxlm.models.quant import dequantize, is_quantized
from jaxlm.models.weight_map import dotted, hf_tensors
from jaxlm.outputs import plain_mode

_DTYPE_NAMES = {jnp.dtype(t): jnp.dtype(t).name for t in (jnp.float32, jnp.bfloat16, jnp.float16)}


def hf_state_dict(model) -> dict[str, jnp.ndarray]:
    """The model's parameters under their HF names and layouts (LoRA merged in, int8 dequantised, layers unstacked)."""
    model = unrolled(model)
    if has_lora(model):
        model = merge_lora(model)
    if is_quantized(model):
        model = dequantize(model)
    arch = architecture_of(model)
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        out.update(hf_tensors(arch.family, dotted(path), var.get_value()))
    return out


def export_pretrained(model, out_dir: str | os.PathLike, tokenizer=None, *, dtype=None, gguf_type: str = "f16",
                      name: str | None = None) -> str:
    """Write config.json, model.safetensors (and tokenizer files with its chat template) to `out_dir`.

    `dtype` (e.g. jnp.bfloat16) converts the saved weights; by default they keep the model's dtype.
    An `out_dir` ending in ".gguf" writes one GGUF file instead (llama.cpp, Ollama), its matrices
    in `gguf_type`: "f32", "f16" or "q8_0" (see `jaxlm.hf.gguf_export`), and `name` as its general.name
    (default: the file's name).
    """
    from safetensors.flax import save_file

    out_dir = os.fspath(out_dir)
    if out_dir.endswith(".gguf"):
        if num_virtual_tokens(model):  # hf_state_dict holds no virtual tokens: the file would silently lose them
            raise UserError(f"{out_dir}: llama.cpp has no virtual tokens; export the base model without the "
                            "prompt-tuning adapter (its adapter folder runs with jaxlm generate --adapter)")
        model_type = architecture_of(model).family.model_type
        return write_gguf(out_dir, hf_state_dict(model), model.config, model_type, tokenizer, gguf_type,
                          name=name)
    os.makedirs(out_dir, exist_ok=True)
    arch = architecture_of(model)
    tensors = hf_state_dict(model)
    if dtype is not None:
        tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    # Contiguous host copies: transposed views cannot be written as they are.
    tensors = {k: jnp.asarray(np.ascontiguousarray(np.asarray(v))) for k, v in tensors.items()}
    saved_dtype = next(iter(tensors.values())).dtype
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    plain_mode(os.path.join(out_dir, "model.safetensors"))  # safetensors writes it 0600

    config = model.config.to_hf()
    config.update(architectures=[arch.name], dtype=_DTYPE_NAMES.get(jnp.dtype(saved_dtype), "float32"))
    if getattr(model.config, "tie_word_embeddings", None) is not None:
        config["tie_word_embeddings"] = model.config.tie_word_embeddings
    _write_json(os.path.join(out_dir, "config.json"), config)
    if arch.family.causal_lm:
        special = ("bos_token_id", "eos_token_id", "pad_token_id")
        generation = {k: config[k] for k in special if config.get(k) is not None}
        _write_json(os.path.join(out_dir, "generation_config.json"), generation)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
