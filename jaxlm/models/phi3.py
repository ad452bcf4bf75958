"""Phi-3 and Phi-4 (`phi3`: Phi-3-mini/medium, Phi-3.5-mini, Phi-4, Phi-4-mini): Llama's computation.

What differs is in the checkpoint and in RoPE, not in the layers:
- HF stores q/k/v as one `qkv_proj` and gate/up as one `gate_up_proj`; the registry row splits them into
  Llama's projections on load and fuses them again on export (`Row.parts` in weight_map), so LoRA's
  short names q,k,v,gate,up are slices of the fused tensors.
- `partial_rotary_factor` (Phi-4-mini: 0.75) rotates only the first part of each head.
- `longrope` (the 128k variants) divides each frequency by a factor from `short_factor`, or from
  `long_factor` when the positions reach past `original_max_position_embeddings`, and multiplies cos
  and sin by an attention factor, as transformers' `_compute_longrope_parameters` does.
- `sliding_window` (Phi-3-mini-4k's 2047) is every layer's window, as Mistral's (`layers.Mask.window`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Self

import jax.numpy as jnp

from jaxlm.models import layers
from jaxlm.models.llama import LlamaConfig, LlamaForCausalLM

# Older Phi-3 configs name longrope "su" (and some "yarn"); transformers' Phi3Config reads both as longrope.
_LONGROPE_NAMES = ("longrope", "su", "yarn")
_LONGROPE_KEYS = ("short_factor", "long_factor", "factor", "attention_factor")


@dataclasses.dataclass(frozen=True)
class Phi3Config(LlamaConfig):
    partial_rotary_factor: float = 1.0
    original_max_position_embeddings: int = 4096  # transformers' default, which also overrides rope_scaling's own

    model_type = "phi3"
    fixed = {"attention_bias": False, "mlp_bias": False}  # Phi-3 has no biases

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Self:
        window = hf.get("sliding_window")
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"config.json: sliding_window={window!r}; expected a positive number of tokens or null")
        rope = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ("default", *_LONGROPE_NAMES):
            raise ValueError(f"config.json: rope_scaling type {kind!r} is not supported (supported: default, longrope)")
        scaling = None
        if kind in _LONGROPE_NAMES:  # lists as tuples: the config must stay hashable for jit
            scaling = {"rope_type": "longrope", **{k: tuple(rope[k]) if isinstance(rope[k], list) else rope[k]
                                                   for k in _LONGROPE_KEYS if rope.get(k)}}
        theta = hf.get("rope_theta") or rope.get("rope_theta", 10000.0)
        base = super().from_hf({**hf, **cls.fixed, "rope_scaling": None, "rope_parameters": None, "rope_theta": theta})
        config = dataclasses.replace(
            base,
            rope_scaling=tuple(sorted(scaling.items())) if scaling else None,
            partial_rotary_factor=float(hf.get("partial_rotary_factor") or rope.get("partial_rotary_factor", 1.0)),
            original_max_position_embeddings=hf.get("original_max_position_embeddings") or 4096,
            sliding_window=window,
        )
        config.rope_frequencies(jnp.zeros((1, 1), jnp.int32))  # factors of the wrong length fail at load
        return config

    def to_hf(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_hf().items() if k not in self.fixed}

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def inverse_frequencies(self):
        return layers.rope_inverse_frequencies(self.rotary_dim, self.rope_theta, None)

    def rope_frequencies(self, positions):
        if self.rope_scaling is None:
            return self.inverse_frequencies
        # transformers picks one set for the whole batch, by the furthest position it is given
        reach = jnp.max(positions) + 1
        short, long = (self.inverse_frequencies / self._longrope_factors(k) for k in ("short_factor", "long_factor"))
        return jnp.where(reach > self.original_max_position_embeddings, long, short)

    def _longrope_factors(self, key: str):
        factors = dict(self.rope_scaling or ()).get(key)
        if factors is None or len(factors) != self.rotary_dim // 2:
            raise ValueError(f"config.json: rope_scaling.{key} must list {self.rotary_dim // 2} numbers "
                             f"(half the rotary dims), not {None if factors is None else len(factors)}")
        return jnp.asarray(factors, jnp.float32)

    @property
    def rope_attention_factor(self) -> float:
        scaling = dict(self.rope_scaling or ())
        if not scaling:
            return 1.0
        if scaling.get("attention_factor"):
            return float(scaling["attention_factor"])
        original = self.original_max_position_embeddings
        factor = scaling.get("factor") or self.max_position_embeddings / original
        return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


class Phi3ForCausalLM(LlamaForCausalLM):
    """Llama's computation with Phi-3's RoPE, named for the HF class whose weights it loads and writes."""
