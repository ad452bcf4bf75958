"""The Qwen2 and Qwen3 families in a GGUF file (llama.cpp's "qwen2" and "qwen3" architectures).

Both are Llama's tensors and metadata keys (models/llama_gguf.py) under their own architecture name,
with two differences: llama.cpp runs Qwen with rotate-half RoPE, as HF does, so the Q and K rows stay
in HF's order (Llama's are permuted); and Qwen3 adds a norm over each query and key head, whose size
(Qwen3's `head_dim`, a setting of its own) is read from `attention.key_length`. Qwen2's q/k/v biases
are the `{p}` of Llama's names. The registry rows' `gguf` (`QWEN2`, `QWEN3`) is all hf/gguf.py and
hf/gguf_export.py see.
"""

from __future__ import annotations

import numpy as np

from jaxlm.models import llama_gguf
from jaxlm.models.weight_map import GGUFLayout

# GGUF tensor name -> HF tensor name ({p} is "weight" or "bias").
NAMES = (
    *llama_gguf.NAMES,
    ("blk.{i}.attn_q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight"),
    ("blk.{i}.attn_k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight"),
)


def hf_config_as(model_type: str, architecture: str):
    """Llama's config.json from the metadata, with Qwen3's head size, under this model_type and class."""

    def hf_config(get, vocab, names) -> dict:
        config = llama_gguf.hf_config(get, vocab, names)
        config["head_dim"] = int(get("attention.key_length", config["head_dim"]))  # Qwen3's own head size
        return {**config, "model_type": model_type, "architectures": [architecture]}

    return hf_config


def from_gguf(name: str, w: np.ndarray, config: dict) -> np.ndarray:
    del name, config  # every tensor is in HF's layout already
    return w


def to_gguf(hf: dict[str, np.ndarray], c):
    return llama_gguf.to_gguf(hf, c, names=NAMES, permute_qk=False)


def sizes(arch: str, vocab_key: str, c: dict) -> list[tuple[str, int, str, int]]:
    """Llama's checks, and Qwen3's head size against its query norm."""
    return [*llama_gguf.sizes(arch, vocab_key, c),
            (f"{arch}.attention.key_length", c["head_dim"], "blk.0.attn_q_norm.weight", 0)]


def _layout(arch: str, architecture: str) -> GGUFLayout:
    return GGUFLayout(arch, NAMES, ("rope_freqs.weight",), hf_config_as(arch, architecture), from_gguf,
                      llama_gguf.write_metadata, to_gguf, sizes)


QWEN2 = _layout("qwen2", "Qwen2ForCausalLM")
QWEN3 = _layout("qwen3", "Qwen3ForCausalLM")
