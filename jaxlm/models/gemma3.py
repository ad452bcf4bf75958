"""Gemma 3 (text): Gemma 2's layers with Gemma-style norms on each query and key head, local layers
with a RoPE base of their own (`rope_local_base_freq`) and global layers with `rope_theta` and
`rope_scaling` (linear), five local layers to a global one unless `layer_types` says otherwise; no
attention soft-cap by default.

`gemma3` checkpoints (Gemma3ForConditionalGeneration, 4B and up) hold this language model beside a
vision tower: their text weights load into `Gemma3ForConditionalGeneration` here, the vision tower
and projector are skipped with a warning, and export writes the text model as a `gemma3_text` folder.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar, Self

from jaxlm.models import layers
from jaxlm.models.gemma2 import Gemma2Config, Gemma2ForCausalLM


@dataclasses.dataclass(frozen=True)
class Gemma3TextConfig(Gemma2Config):
    rope_local_base_freq: float = 10000.0

    model_type = "gemma3_text"
    qk_norm = True
    hf_defaults: ClassVar[dict[str, Any]] = {
        **Gemma2Config.hf_defaults, "attn_logit_softcapping": None, "final_logit_softcapping": None,
        "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
    }
    sliding_pattern = 6

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Self:
        rope = hf.get("rope_parameters") or {}
        if set(rope) & {"full_attention", "sliding_attention"}:  # transformers 5: a set per layer type
            full, local = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
            if local.get("rope_type", "default") != "default":
                raise ValueError(f"config.json: rope_parameters.sliding_attention.rope_type={local['rope_type']!r}; "
                                 "only the global layers' RoPE may be scaled")
            hf = {**hf, "rope_parameters": full, "rope_scaling": None,
                  "rope_theta": full.get("rope_theta", cls.hf_defaults["rope_theta"]),
                  "rope_local_base_freq": local.get("rope_theta", cls.hf_defaults["rope_local_base_freq"])}
        config = super().from_hf(hf)
        local_theta = hf.get("rope_local_base_freq") or cls.hf_defaults["rope_local_base_freq"]
        return dataclasses.replace(config, rope_local_base_freq=float(local_theta))

    def layer_inverse_frequencies(self, index: int):
        """Global layers: `rope_theta` with `rope_scaling`; local (sliding) ones: `rope_local_base_freq`, unscaled."""
        if self.layer_types[index] == "full_attention":
            return self.inverse_frequencies
        return layers.rope_inverse_frequencies(self.head_dim, self.rope_local_base_freq, None)


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    """Gemma 2's computation with Gemma 3's query/key norms and per-layer RoPE, named for the HF class."""


class Gemma3Config(Gemma3TextConfig):
    """A `gemma3` (vision and text) config.json read for its `text_config`; written back as the text model."""

    model_type = "gemma3"

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Self:
        if "text_config" not in hf:
            raise KeyError("text_config")
        if hf.get("vision_config") is not None:
            warnings.warn("config.json: a gemma3 checkpoint: its language model loads, the vision tower and "
                          "projector are skipped (jaxlm trains and generates text only)", stacklevel=2)
        text = {**hf["text_config"], "model_type": Gemma3TextConfig.model_type}
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # kept at the top level of gemma3 configs
            text.setdefault(key, hf.get(key))
        return super().from_hf(text)

    def to_hf(self) -> dict[str, Any]:
        return dict(super().to_hf(), model_type=Gemma3TextConfig.model_type, architectures=["Gemma3ForCausalLM"])


class Gemma3ForConditionalGeneration(Gemma3ForCausalLM):
    """The language model of a `gemma3` checkpoint (its text weights; the vision tower is not loaded)."""
