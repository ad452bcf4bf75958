"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention, and mixture-of-experts MLPs.

Each sparse layer routes a token to `num_experts_per_tok` of `num_experts` experts of size
`moe_intermediate_size`, renormalising their probabilities when `norm_topk_prob`; a layer is
sparse when it is not in `mlp_only_layers` and its number is a multiple of `decoder_sparse_step`
(released checkpoints: every layer), else a dense MLP of `intermediate_size`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

from jaxlm.models.llama_moe import LlamaMoEForCausalLM, MoEFields
from jaxlm.models.qwen3 import Qwen3Config


@dataclasses.dataclass(frozen=True)
class Qwen3MoeConfig(MoEFields, Qwen3Config):
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()

    model_type = "qwen3_moe"

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Self:
        config = super().from_hf(hf)
        return dataclasses.replace(
            config,
            num_experts=hf.get("num_experts") or hf["num_local_experts"],  # transformers 5 writes the latter
            num_experts_per_tok=hf["num_experts_per_tok"],
            expert_size=hf["moe_intermediate_size"],
            norm_topk_prob=hf.get("norm_topk_prob", False),
            router_aux_loss_coef=hf.get("router_aux_loss_coef", 0.001),
            router_z_loss_coef=hf.get("router_z_loss_coef", 0.0),
            decoder_sparse_step=hf.get("decoder_sparse_step", 1),
            mlp_only_layers=tuple(hf.get("mlp_only_layers") or ()),
        )

    def to_hf(self) -> dict[str, Any]:
        out = super().to_hf()
        out["moe_intermediate_size"] = out.pop("expert_size")
        out["mlp_only_layers"] = list(self.mlp_only_layers)
        return out

    def is_sparse(self, layer: int) -> bool:
        sparse_step = (layer + 1) % self.decoder_sparse_step == 0
        return layer not in self.mlp_only_layers and self.num_experts > 0 and sparse_step


class Qwen3MoeForCausalLM(LlamaMoEForCausalLM):
    """Qwen3's attention with mixture-of-experts layers, named for the HF class whose weights it loads and writes."""
