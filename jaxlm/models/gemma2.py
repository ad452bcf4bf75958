"""Gemma 2: Llama's skeleton with Gemma's choices, as transformers' Gemma2ForCausalLM computes them.

RMSNorms scale by 1 + weight (in float32, then cast), and each block is normed before and after
(four norms a layer); the MLP gates with tanh-approximate GELU (`hidden_activation`); embeddings are
scaled by sqrt(hidden_size) in the compute dtype; attention scales by `query_pre_attn_scalar ** -0.5`
and soft-caps its scores (`attn_logit_softcapping`), the output soft-caps the logits
(`final_logit_softcapping`); `layer_types` says which layers attend over a sliding window.

What differs between layers (the window; Gemma 3's RoPE frequencies) is data each layer holds
(`layers.LayerConstant`), not a Python constant, so differing layers still stack into one scanned
layer (`scan.stack`). Models/gemma3.py builds Gemma 3 on these classes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self

import jax.numpy as jnp
from flax import nnx

from jaxlm.models import layers, llama
from jaxlm.models.kv_cache import LayerCache
from jaxlm.models.llama import LlamaConfig, LlamaForCausalLM

LAYER_TYPES = ("sliding_attention", "full_attention")
# A full-attention layer's window: longer than any sequence, so the same mask arithmetic sees every key.
NO_WINDOW = 2**30


@dataclasses.dataclass(frozen=True)
class Gemma2Config(LlamaConfig):
    query_pre_attn_scalar: int | float = 256
    attn_logit_softcapping: float | None = 50.0
    final_logit_softcapping: float | None = 30.0
    layer_types: tuple[str, ...] = ()  # one of LAYER_TYPES per layer

    model_type = "gemma2"
    norm_offset = True
    # transformers' defaults for keys a released config.json may leave out
    hf_defaults: ClassVar[dict[str, Any]] = {
        "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "sliding_window": 4096, "tie_word_embeddings": True, "hidden_activation": "gelu_pytorch_tanh",
    }
    sliding_pattern = 2  # without `layer_types`: every `sliding_pattern`-th layer is global, the rest slide

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Self:
        hf = {**cls.hf_defaults, **hf}
        act = hf.get("hidden_activation") or hf.get("hidden_act")
        if act not in layers.ACTIVATIONS:
            raise ValueError(f"config.json: hidden_activation={act!r}; supported: {', '.join(layers.ACTIVATIONS)}")
        if hf.get("use_bidirectional_attention"):
            raise ValueError("config.json: use_bidirectional_attention=true (an embedding model) is not supported")
        count = hf["num_hidden_layers"]
        pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or cls.sliding_pattern
        types = tuple(hf.get("layer_types") or (LAYER_TYPES[(i + 1) % pattern == 0] for i in range(count)))
        if len(types) != count or not set(types) <= set(LAYER_TYPES):
            raise ValueError(f"config.json: layer_types={list(types)}; expected {count} of {', '.join(LAYER_TYPES)}")
        window = hf.get("sliding_window")
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"config.json: sliding_window={window!r}; expected a positive number of tokens or null")
        config = super().from_hf({**hf, "hidden_act": "silu"})  # Llama's check; Gemma's activation is set below
        return dataclasses.replace(
            config, hidden_act=act, sliding_window=window, layer_types=types,
            query_pre_attn_scalar=hf["query_pre_attn_scalar"],  # an int in transformers, which checks
            attn_logit_softcapping=hf.get("attn_logit_softcapping"),
            final_logit_softcapping=hf.get("final_logit_softcapping"),
        )

    def to_hf(self) -> dict[str, Any]:
        out = super().to_hf()
        out["hidden_activation"] = out.pop("hidden_act")
        out["layer_types"] = list(self.layer_types)
        out.setdefault("sliding_window", None)  # transformers' default is a window, not none
        return out

    def layer_window(self, index: int) -> int:
        """The window of layer `index` (NO_WINDOW for a global layer)."""
        sliding = self.layer_types[index] == "sliding_attention"
        return self.sliding_window if sliding and self.sliding_window is not None else NO_WINDOW

    def layer_inverse_frequencies(self, index: int):
        """The RoPE frequencies of layer `index`: Gemma 2's are the same on every layer."""
        del index
        return self.inverse_frequencies


class Attention(llama.Attention):
    """Llama's attention with Gemma's scale and soft-cap, and this layer's window and RoPE frequencies as data."""

    def __init__(self, cfg: Gemma2Config, index: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        super().__init__(cfg, rngs=rngs, param_dtype=param_dtype)
        self.scale = cfg.query_pre_attn_scalar**-0.5
        self.softcap = cfg.attn_logit_softcapping
        self.window = None  # Llama's one window for all layers; here each layer has its own:
        self.layer_window = layers.LayerConstant(jnp.asarray(cfg.layer_window(index), jnp.int32))
        self.layer_inv_freq = layers.LayerConstant(jnp.asarray(cfg.layer_inverse_frequencies(index), jnp.float32))

    def layer_view(self, mask: layers.Mask, inv_freq):
        del inv_freq  # the model's; this layer's own may differ (Gemma 3's local layers)
        return dataclasses.replace(mask, window=self.layer_window[...]), self.layer_inv_freq[...]


class DecoderLayer(nnx.Module):
    """Normed before and after attention and before and after the MLP."""

    def __init__(self, cfg: Gemma2Config, index: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        def norm():
            return layers.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype, offset=True)

        self.input_layernorm = norm()
        self.self_attn = Attention(cfg, index, rngs=rngs, param_dtype=param_dtype)
        self.post_attention_layernorm = norm()
        self.pre_feedforward_layernorm = norm()
        self.mlp = llama.MLP(cfg, rngs=rngs, param_dtype=param_dtype)
        self.post_feedforward_layernorm = norm()

    def __call__(self, x, positions, mask, inv_freq, kv: LayerCache | None = None):
        attn, kv = self.self_attn(self.input_layernorm(x), positions, mask, inv_freq, kv)
        x = x + self.post_attention_layernorm(attn)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x))), kv


class Gemma2ForCausalLM(LlamaForCausalLM):
    """Llama's forward and KV cache over Gemma's layers, embedding scale and logit soft-cap."""

    config: Gemma2Config

    @staticmethod
    def make_layer(cfg, index: int, *, rngs: nnx.Rngs, param_dtype) -> nnx.Module:
        return DecoderLayer(cfg, index, rngs=rngs, param_dtype=param_dtype)

    def embed(self, input_ids):
        x = self.embed_tokens(input_ids)
        # The normalizer is rounded to x's dtype, as HF does. Virtual tokens (ids past the vocabulary,
        # models/prompt_tuning.py) stay unscaled: PEFT passes its prompt embeddings as inputs_embeds.
        scale = jnp.where(input_ids < self.config.vocab_size, self.config.hidden_size**0.5, 1.0)
        return x * scale[..., None].astype(x.dtype)

    def logits(self, hidden):
        logits = super().logits(hidden)
        cap = self.config.final_logit_softcapping
        return logits if cap is None else cap * jnp.tanh(logits / cap)

    def output_kernel(self):
        """None with a final soft-cap: the logits are not one matrix product (losses then call `logits`)."""
        return None if self.config.final_logit_softcapping is not None else super().output_kernel()
