"""The Llama family (Llama 2/3, SmolLM2, ...): RMSNorm, RoPE, grouped-query attention, SwiGLU."""

from __future__ import annotations

import dataclasses
from typing import Any, Self

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import layers, scan
from jaxlm.models.execution import Execution, decoder_layers
from jaxlm.models.kv_cache import KVCache, LayerCache


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None  # HF dict as sorted items: configs must be hashable for jit
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None  # a list in config.json: a tuple keeps the config hashable
    pad_token_id: int | None = None

    model_type = "llama"
    # Facts of a family rather than fields of its config.json, which subclasses override:
    output_bias = None  # o_proj's bias: None follows attention_bias; False never (Qwen2 biases only q/k/v)
    qk_norm = False  # an RMSNorm over each query and key head before RoPE (Qwen3)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Self:
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config.json: hidden_act={act!r}; the Llama family here supports 'silu'")
        heads = hf["num_attention_heads"]
        rope = hf.get("rope_scaling") or hf.get("rope_parameters")
        theta = hf.get("rope_theta") or (rope or {}).get("rope_theta", 10000.0)
        if rope and rope.get("rope_type", rope.get("type")) == "default":
            rope = None
        config = cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=tuple(sorted(rope.items())) if rope else None,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            attention_bias=hf.get("attention_bias", False),
            mlp_bias=hf.get("mlp_bias", False),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=_hashable(hf.get("eos_token_id")),
            pad_token_id=hf.get("pad_token_id"),
        )
        _ = config.inverse_frequencies  # an unsupported rope_scaling type fails at load, not at the first forward pass
        return config

    def to_hf(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(model_type=self.model_type, hidden_act="silu")
        if out["rope_scaling"] is None:
            del out["rope_scaling"]
        else:
            out["rope_scaling"] = dict(out["rope_scaling"])
        if isinstance(out["eos_token_id"], tuple):
            out["eos_token_id"] = list(out["eos_token_id"])
        return out

    @property
    def inverse_frequencies(self):
        scaling = dict(self.rope_scaling) if self.rope_scaling else None
        return layers.rope_inverse_frequencies(self.head_dim, self.rope_theta, scaling)


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        d, h, kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
        options = dict(bias=cfg.attention_bias, param_dtype=param_dtype)
        self.q_proj = layers.linear(rngs, d, h * cfg.head_dim, **options)
        self.k_proj = layers.linear(rngs, d, kv * cfg.head_dim, **options)
        self.v_proj = layers.linear(rngs, d, kv * cfg.head_dim, **options)
        o_bias = cfg.attention_bias if cfg.output_bias is None else cfg.output_bias
        self.o_proj = layers.linear(rngs, h * cfg.head_dim, d, **dict(options, bias=o_bias))
        if cfg.qk_norm:
            self.q_norm = layers.RMSNorm(cfg.head_dim, cfg.rms_norm_eps, param_dtype=param_dtype)
            self.k_norm = layers.RMSNorm(cfg.head_dim, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.heads, self.kv_heads, self.head_dim, self.qk_norm = h, kv, cfg.head_dim, cfg.qk_norm

    def __call__(self, x, positions, mask: layers.Mask, inv_freq, kv: LayerCache | None = None):
        b, t, _ = x.shape
        q, k, v = layers.fan_out((self.q_proj, self.k_proj, self.v_proj), x)
        q, k = q.reshape(b, t, self.heads, self.head_dim), k.reshape(b, t, self.kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = layers.apply_rope(q, positions, inv_freq), layers.apply_rope(k, positions, inv_freq)
        out, kv = layers.attention(q, k, v.reshape(b, t, self.kv_heads, self.head_dim), mask, cache=kv)
        return self.o_proj(out.reshape(b, t, -1)), kv


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        d, f = cfg.hidden_size, cfg.intermediate_size
        options = dict(bias=cfg.mlp_bias, param_dtype=param_dtype)
        self.gate_proj = layers.linear(rngs, d, f, **options)
        self.up_proj = layers.linear(rngs, d, f, **options)
        self.down_proj = layers.linear(rngs, f, d, **options)

    def __call__(self, x):
        gate, up = layers.fan_out((self.gate_proj, self.up_proj), x)
        return self.down_proj(jax.nn.silu(gate) * up)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.input_layernorm = layers.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.self_attn = Attention(cfg, rngs=rngs, param_dtype=param_dtype)
        self.post_attention_layernorm = layers.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(cfg, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, positions, mask, inv_freq, kv: LayerCache | None = None):
        attn, kv = self.self_attn(self.input_layernorm(x), positions, mask, inv_freq, kv)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class LlamaForCausalLM(nnx.Module):
    """Causal LM: the one forward pass of `models.contract.CausalLM`, with or without a KV cache.

    How it runs (not what it computes) is `execution` (models/execution.py), fixed when it is built."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
                 execution: Execution = Execution()):
        self.config, self.execution = cfg, execution
        self.embed_tokens = layers.embed(rngs, cfg.vocab_size, cfg.hidden_size, param_dtype=param_dtype)
        self.layers = decoder_layers(lambda i: self.make_layer(cfg, i, rngs=rngs, param_dtype=param_dtype),
                                     cfg.num_hidden_layers, execution)
        self.norm = layers.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = layers.linear(rngs, cfg.hidden_size, cfg.vocab_size, bias=False, param_dtype=param_dtype)

    @staticmethod
    def make_layer(cfg, index: int, *, rngs: nnx.Rngs, param_dtype) -> nnx.Module:
        """Decoder layer `index` (a variant family's model overrides this, e.g. mixture-of-experts layers)."""
        return DecoderLayer(cfg, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, input_ids, attention_mask=None, *, positions=None, segment_ids=None, lengths=None,
                 cache: KVCache | None = None, return_hidden=False):
        """See `models.contract.CausalLM.__call__`. `return_hidden=True` gives the final hidden states;
        `self.logits(hidden)` projects them, so a loss can project a few tokens at a time."""
        positions, mask, cache = layers.causal_inputs(input_ids, attention_mask, positions, segment_ids, lengths,
                                                      cache, self.execution.attention)
        inv_freq = self.config.inverse_frequencies
        x, cache = scan.run(self.layers, self.embed_tokens(input_ids),
                            lambda layer, y, kv: layer(y, positions, mask, inv_freq, kv),
                            remat=self.execution.remat, cache=cache)
        hidden = self.norm(x)
        out = hidden if return_hidden else self.logits(hidden)
        return out if cache is None else (out, cache)

    def init_cache(self, batch: int, slots: int, dtype=jnp.float32) -> KVCache:
        cfg = self.config
        return KVCache.create(cfg.num_hidden_layers, batch, slots, cfg.num_key_value_heads, cfg.head_dim, dtype,
                              stacked=scan.is_stacked(self.layers))

    def output_kernel(self):
        """The output projection as one [hidden, vocab] matrix, or None when it is not one (LoRA on lm_head)."""
        if self.config.tie_word_embeddings:
            return self.embed_tokens.embedding[...].T
        return self.lm_head.kernel[...] if type(self.lm_head) is nnx.Linear and self.lm_head.bias is None else None

    def logits(self, hidden):
        """The output projection of final hidden states [..., hidden] to [..., vocab]."""
        if self.config.tie_word_embeddings:
            return self.embed_tokens.attend(hidden)
        return self.lm_head(hidden)
