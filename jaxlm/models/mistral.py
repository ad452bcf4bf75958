"""Mistral (7B v0.2 and later, Nemo, ...): Llama's architecture under its own `model_type`.

Mistral 7B v0.1's sliding-window attention is not implemented: a config whose window is
shorter than its positions is refused, rather than computed differently from transformers.
"""

from __future__ import annotations

from typing import Any, Self

from jaxlm.models.llama import LlamaConfig, LlamaForCausalLM


class MistralConfig(LlamaConfig):
    model_type = "mistral"

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Self:
        window, positions = hf.get("sliding_window"), hf.get("max_position_embeddings", 2048)
        if window is not None and window < positions:
            raise ValueError(
                f"config.json: sliding_window={window} is shorter than max_position_embeddings={positions}; "
                "sliding-window attention is not supported"
            )
        return super().from_hf(hf)

    def to_hf(self) -> dict[str, Any]:
        return dict(super().to_hf(), sliding_window=None)  # transformers' default is a 4096-token window


class MistralForCausalLM(LlamaForCausalLM):
    """Llama's computation, named for the HF class whose weights it loads and writes."""
