"""Qwen2 and Qwen2.5: Llama's architecture with biases on the query, key and value projections only.

Sliding-window attention (`use_sliding_window`, off in every released checkpoint) is not
implemented: a config that turns it on is refused, rather than computed differently from transformers.
"""

from __future__ import annotations

from typing import Any, Self

from jaxlm.models.llama import LlamaConfig, LlamaForCausalLM


def refuse_sliding_window(hf: dict[str, Any]) -> None:
    """A ValueError naming the key when a Qwen config asks for sliding-window attention on any layer."""
    if hf.get("use_sliding_window"):
        raise ValueError("config.json: use_sliding_window=true; sliding-window attention is not supported")
    if "sliding_attention" in (hf.get("layer_types") or ()):
        raise ValueError("config.json: layer_types has 'sliding_attention'; sliding-window attention is not supported")


class Qwen2Config(LlamaConfig):
    model_type = "qwen2"
    output_bias = False
    fixed = {"attention_bias": True, "mlp_bias": False}  # set by the architecture, not read from config.json

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Self:
        refuse_sliding_window(hf)
        return super().from_hf({**hf, **cls.fixed})

    def to_hf(self) -> dict[str, Any]:
        out = {k: v for k, v in super().to_hf().items() if k not in self.fixed}
        return dict(out, use_sliding_window=False, sliding_window=None)


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Llama's computation with Qwen2's biases, named for the HF class whose weights it loads and writes."""
