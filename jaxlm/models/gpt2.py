"""GPT-2: learned positions, pre-LayerNorm blocks, fused QKV projection, tied LM head."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxlm.models import layers, scan
from jaxlm.models.execution import Execution, decoder_layers
from jaxlm.models.kv_cache import KVCache, LayerCache


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    n_embd: int
    n_layer: int
    n_head: int
    n_positions: int = 1024
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    model_type = "gpt2"
    tie_word_embeddings = True

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> GPT2Config:
        if hf.get("activation_function", "gelu_new") not in layers.ACTIVATIONS:
            raise ValueError(f"config.json: activation_function={hf['activation_function']!r} is not supported")
        if hf.get("tie_word_embeddings", True) is False:
            raise ValueError("config.json: GPT-2 with untied embeddings is not supported")
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{k: hf[k] for k in names if k in hf})

    def to_hf(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), model_type=self.model_type)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class Attention(nnx.Module):
    def __init__(self, cfg: GPT2Config, layer_idx: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.c_attn = layers.linear(rngs, cfg.n_embd, 3 * cfg.n_embd, bias=True, param_dtype=param_dtype)
        self.c_proj = layers.linear(rngs, cfg.n_embd, cfg.n_embd, bias=True, param_dtype=param_dtype)
        self.heads, self.head_dim = cfg.n_head, cfg.head_dim
        scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.scale = scale

    def __call__(self, x, mask, kv: LayerCache | None = None):
        b, t, _ = x.shape
        q, k, v = (y.reshape(b, t, self.heads, self.head_dim) for y in jnp.split(self.c_attn(x), 3, axis=-1))
        out, kv = layers.attention(q, k, v, mask, scale=self.scale, cache=kv)
        return self.c_proj(out.reshape(b, t, -1)), kv


class MLP(nnx.Module):
    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        inner = cfg.n_inner or 4 * cfg.n_embd
        self.c_fc = layers.linear(rngs, cfg.n_embd, inner, bias=True, param_dtype=param_dtype)
        self.c_proj = layers.linear(rngs, inner, cfg.n_embd, bias=True, param_dtype=param_dtype)
        self.activation = cfg.activation_function

    def __call__(self, x):
        return self.c_proj(layers.ACTIVATIONS[self.activation](self.c_fc(x)))


def layer_norm(cfg: GPT2Config, param_dtype) -> nnx.LayerNorm:
    return layers.layer_norm(cfg.n_embd, cfg.layer_norm_epsilon, param_dtype=param_dtype)


class Block(nnx.Module):
    def __init__(self, cfg: GPT2Config, layer_idx: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.ln_1 = layer_norm(cfg, param_dtype)
        self.attn = Attention(cfg, layer_idx, rngs=rngs, param_dtype=param_dtype)
        self.ln_2 = layer_norm(cfg, param_dtype)
        self.mlp = MLP(cfg, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, mask, kv: LayerCache | None = None):
        attn, kv = self.attn(self.ln_1(x), mask, kv)
        x = x + attn
        return x + self.mlp(self.ln_2(x)), kv


class GPT2LMHeadModel(nnx.Module):
    """Causal LM with the Llama family's one forward pass (`models.contract.CausalLM`) and `execution`."""

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs, param_dtype=jnp.float32, execution: Execution = Execution()):
        self.config, self.execution = cfg, execution
        self.wte = layers.embed(rngs, cfg.vocab_size, cfg.n_embd, param_dtype=param_dtype)
        self.wpe = layers.embed(rngs, cfg.n_positions, cfg.n_embd, param_dtype=param_dtype)
        self.h = decoder_layers(lambda i: Block(cfg, i, rngs=rngs, param_dtype=param_dtype), cfg.n_layer, execution)
        self.ln_f = layer_norm(cfg, param_dtype)

    def __call__(self, input_ids, attention_mask=None, *, positions=None, segment_ids=None, lengths=None,
                 cache: KVCache | None = None, return_hidden=False):
        """See `models.contract.CausalLM.__call__`."""
        positions, mask, cache = layers.causal_inputs(input_ids, attention_mask, positions, segment_ids, lengths,
                                                      cache, self.execution.attention)
        x, cache = scan.run(self.h, self.wte(input_ids) + self.wpe(positions), lambda block, y, kv: block(y, mask, kv),
                            remat=self.execution.remat, cache=cache)
        hidden = self.ln_f(x)
        out = hidden if return_hidden else self.logits(hidden)
        return out if cache is None else (out, cache)

    def output_kernel(self):
        """The tied output projection as one [n_embd, vocab] matrix."""
        return self.wte.embedding[...].T

    def logits(self, hidden):
        """The tied output projection of final hidden states [..., n_embd] to [..., vocab]."""
        return self.wte.attend(hidden)

    def init_cache(self, batch: int, slots: int, dtype=jnp.float32) -> KVCache:
        cfg = self.config
        return KVCache.create(cfg.n_layer, batch, slots, cfg.n_head, cfg.head_dim, dtype,
                              stacked=scan.is_stacked(self.h))
