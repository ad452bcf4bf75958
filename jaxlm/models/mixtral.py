"""Mixtral (8x7B, 8x22B): Mistral's attention, and a mixture of `num_local_experts` experts in every
layer, each token routed to `num_experts_per_tok` (2) of them with renormalised probabilities."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self

from jaxlm.models.llama_moe import LlamaMoEForCausalLM, MoEFields, refuse_router_jitter
from jaxlm.models.mistral import MistralConfig


@dataclasses.dataclass(frozen=True)
class MixtralConfig(MoEFields, MistralConfig):
    model_type = "mixtral"
    expert_names: ClassVar[tuple[str, str, str]] = ("w1", "w3", "w2")
    moe_attribute: ClassVar[str] = "block_sparse_moe"

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Self:
        refuse_router_jitter(hf)
        config = super().from_hf(hf)
        return dataclasses.replace(config, num_experts=hf["num_local_experts"],
                                   num_experts_per_tok=hf["num_experts_per_tok"], expert_size=hf["intermediate_size"],
                                   norm_topk_prob=True, router_aux_loss_coef=hf.get("router_aux_loss_coef", 0.001),
                                   router_z_loss_coef=hf.get("router_z_loss_coef", 0.0))

    def to_hf(self) -> dict[str, Any]:
        out = super().to_hf()
        out["num_local_experts"] = out.pop("num_experts")
        del out["expert_size"], out["norm_topk_prob"]  # the experts' size is intermediate_size; always renormalised
        return out


class MixtralForCausalLM(LlamaMoEForCausalLM):
    """Mistral's attention with Mixtral's experts, named for the HF class whose weights it loads and writes."""
