"""Qwen3 (dense): Llama's architecture with an RMSNorm over each query and key head before RoPE.

Its `head_dim` is a setting of its own (128 at every size), not hidden_size / heads. Biases follow
`attention_bias` (false in released checkpoints). Sliding-window attention is refused as for Qwen2.
"""

from __future__ import annotations

from jaxlm.models.llama import LlamaForCausalLM
from jaxlm.models.qwen2 import Qwen2Config


class Qwen3Config(Qwen2Config):
    model_type = "qwen3"
    output_bias = None  # attention_bias, when a config sets it, biases o_proj too
    qk_norm = True
    fixed = {"mlp_bias": False}


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Llama's computation with Qwen3's query/key norms, named for the HF class whose weights it loads and writes."""
