"""Llama's architecture with mixture-of-experts MLPs (`models/moe.py`): the base of Mixtral and Qwen3-MoE.

A family's config subclasses its dense config with `MoEFields` and says which layers are sparse
(`is_sparse`) and what its experts' modules are called; the model is `LlamaMoEForCausalLM`. The
forward pass carries the routers' statistics through the layers beside the hidden states, and
`router_aux_loss(model)` reads the load-balancing loss of the last forward pass (training adds
`router_aux_loss_coef` times it, as transformers does).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar, cast

import jax
import jax.numpy as jnp
from flax import errors, nnx

from jaxlm.models import layers, scan
from jaxlm.models.execution import Execution
from jaxlm.models.kv_cache import KVCache, LayerCache
from jaxlm.models.llama import MLP, Attention, LlamaForCausalLM
from jaxlm.models.moe import RouterStats, SparseMoE, load_balancing_loss, router_z_loss


@dataclasses.dataclass(frozen=True)
class MoEFields:
    """The config fields every MoE family has, under jaxlm's names (each family reads its own keys)."""

    num_experts: int = 0
    num_experts_per_tok: int = 2
    expert_size: int = 0  # each expert's intermediate size
    norm_topk_prob: bool = True  # renormalise the k chosen probabilities to sum to 1
    router_aux_loss_coef: float = 0.001
    # The router z-loss's weight (config.json `router_z_loss_coef`, Switch Transformers' name; ST-MoE used
    # 0.001); 0 leaves it out, as transformers' Mixtral and Qwen3-MoE do. model.config_overrides sets it.
    router_z_loss_coef: float = 0.0

    expert_names: ClassVar[tuple[str, str, str]] = ("gate_proj", "up_proj", "down_proj")  # HF's (gate, up, down)
    moe_attribute: ClassVar[str] = "mlp"  # the decoder layer's attribute holding the experts, as HF names it
    # The module of a decoder layer holding its experts in transformers' models (in memory, as PEFT adapts
    # them): two 3-d parameters, gate_up_proj (gate's rows, then up's) and down_proj (`hf.peft`).
    hf_experts: ClassVar[str] = "mlp.experts"

    def is_sparse(self, layer: int) -> bool:
        return True


def refuse_router_jitter(hf: dict[str, Any]) -> None:
    if hf.get("router_jitter_noise"):
        raise ValueError(f"config.json: router_jitter_noise={hf['router_jitter_noise']} (training-time noise on "
                         "the router's input) is not supported; set it to 0")


class MoEDecoderLayer(nnx.Module):
    """Llama's decoder layer whose MLP is a `SparseMoE` (or a dense MLP on the layers the config keeps dense)."""

    def __init__(self, cfg, index: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.input_layernorm = layers.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.self_attn = Attention(cfg, rngs=rngs, param_dtype=param_dtype)
        self.post_attention_layernorm = layers.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        if cfg.is_sparse(index):
            mlp = SparseMoE(cfg.hidden_size, cfg.expert_size, cfg.num_experts, cfg.num_experts_per_tok,
                            cfg.norm_topk_prob, cfg.expert_names, rngs=rngs, param_dtype=param_dtype)
        else:
            mlp = MLP(cfg, rngs=rngs, param_dtype=param_dtype)
        setattr(self, cfg.moe_attribute, mlp)
        self.moe_attribute, self.num_experts = cfg.moe_attribute, cfg.num_experts

    def __call__(self, carry: tuple[jax.Array, RouterStats | None], positions, mask, inv_freq, real,
                 kv: LayerCache | None = None, expert_axis: str = ""):
        x, stats = carry
        attn, kv = self.self_attn(self.input_layernorm(x), positions, mask, inv_freq, kv)
        x = x + attn
        mlp = getattr(self, self.moe_attribute)
        normed = self.post_attention_layernorm(x)
        if isinstance(mlp, SparseMoE):
            out, stats = mlp(normed, real, stats, expert_axis)
        else:
            out = mlp(normed)
        return (x + out, stats), kv


class LlamaMoEForCausalLM(LlamaForCausalLM):
    """Llama's causal LM with `MoEDecoderLayer`s; the contract is Llama's (`models.contract.CausalLM`)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, param_dtype=jnp.float32, execution: Execution = Execution()):
        super().__init__(cfg, rngs=rngs, param_dtype=param_dtype, execution=execution)
        self.router_loss = nnx.Intermediate(jnp.zeros((), jnp.float32))  # load balancing
        self.router_z_loss = nnx.Intermediate(jnp.zeros((), jnp.float32))
        moe = cast(MoEFields, cfg)
        self.sparse_layers = sum(map(moe.is_sparse, range(cfg.num_hidden_layers)))
        # [sparse layers, experts]: each expert's share of its layer's routing choices (`RouterStats.expert_shares`)
        self.expert_load = nnx.Intermediate(jnp.zeros((self.sparse_layers, moe.num_experts), jnp.float32))

    @staticmethod
    def make_layer(cfg, index: int, *, rngs: nnx.Rngs, param_dtype) -> nnx.Module:
        return MoEDecoderLayer(cfg, index, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, input_ids, attention_mask=None, *, positions=None, segment_ids=None, lengths=None,
                 cache: KVCache | None = None, return_hidden=False):
        """See `models.contract.CausalLM.__call__`; without a cache also keeps the routers' losses
        (`router_aux_loss`) and the experts' load (`expert_load`)."""
        positions, mask, cache = layers.causal_inputs(input_ids, attention_mask, positions, segment_ids, lengths,
                                                      cache, self.execution.attention)
        inv_freq = self.config.rope_frequencies(positions)
        real = mask.real_tokens(*input_ids.shape)
        # Kept for training and scoring; generation (a cache) has no use for the statistics and skips them.
        stats = None if cache is not None else RouterStats.zeros(cast(MoEFields, self.config).num_experts,
                                                                  self.sparse_layers)
        axis = self.execution.expert_axis
        (x, stats), cache = scan.run(self.layers, (self.embed(input_ids), stats),
                                     lambda layer, y, kv: layer(y, positions, mask, inv_freq, real, kv, axis),
                                     remat=self.execution.remat, cache=cache)
        # A model closed over by a jitted function (a user's own scoring) cannot change its variables there; the
        # train and eval steps merge it inside.
        if stats is not None:
            with contextlib.suppress(errors.TraceContextError):
                self.router_loss.set_value(load_balancing_loss(stats))
                self.router_z_loss.set_value(router_z_loss(stats))
                self.expert_load.set_value(stats.expert_shares())
        hidden = self.norm(x)
        out = hidden if return_hidden else self.logits(hidden)
        return out if cache is None else (out, cache)


def expert_load(model) -> jax.Array | None:
    """[sparse layers, experts]: each expert's share of its layer's routing choices in `model`'s last forward
    pass without a cache, or None for a model without routers."""
    return model.expert_load.get_value() if isinstance(model, LlamaMoEForCausalLM) else None


def router_aux_loss(model) -> jax.Array | None:
    """The routers' losses of `model`'s last forward pass, each times its config coefficient (load balancing
    and z-loss), or None for a model without routers."""
    if not isinstance(model, LlamaMoEForCausalLM):
        return None
    config = cast(MoEFields, model.config)
    return (config.router_aux_loss_coef * model.router_loss.get_value()
            + config.router_z_loss_coef * model.router_z_loss.get_value())
