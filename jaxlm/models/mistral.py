"""Mistral (7B v0.1/v0.2 and later, Nemo, ...): Llama's architecture under its own `model_type`.

Mistral 7B v0.1 attends over a sliding window (`sliding_window`, 4096 tokens) on every layer:
`layers.Mask.window`, as transformers applies it (later versions set it to null).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

from jaxlm.models.llama import LlamaConfig, LlamaForCausalLM


class MistralConfig(LlamaConfig):
    model_type = "mistral"

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Self:
        window = hf.get("sliding_window")
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"config.json: sliding_window={window!r}; expected a positive number of tokens or null")
        return dataclasses.replace(super().from_hf(hf), sliding_window=window)

    def to_hf(self) -> dict[str, Any]:
        return dict(super().to_hf(), sliding_window=self.sliding_window)  # transformers' default is 4096, not none


class MistralForCausalLM(LlamaForCausalLM):
    """Llama's computation, named for the HF class whose weights it loads and writes."""
