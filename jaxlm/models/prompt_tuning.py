"""Prompt tuning (Lester et al. 2021): learned virtual-token embeddings before the input; only they train.

`apply_prompt_tuning(model, n)` swaps the causal LM's input token table (`Family.token_embedding`)
for a `PromptTunedEmbed` that keeps the table under its own name, so weight maps and export see
the same parameter, and adds the n virtual tokens as a `VirtualTokens` variable: a type of its
own, not an `nnx.Param`, so an optimizer restricted to it trains nothing else and HF export
never sees it. Virtual token i has the id `vocab_size + i`; a forward pass or a prompt only has
to start with those ids, so the model files do not change:

* training (`prepend_virtual_tokens`): the virtual tokens take positions 0..n-1 and each row's
  tokens move up by n, as PEFT's `inputs_embeds` concatenation places them; their outputs are
  dropped before the loss (PEFT labels them -100).
* generation (`jaxlm.sampling`): each prompt starts with the virtual ids, so they fill the first
  cache slots of the row, at positions 0..n-1, and the prompt follows at n.

Prefix tuning (Li & Liang 2021: learned keys and values in every layer's cache) is not here: it
needs training through a pre-filled KV cache, which the forward pass takes only for generation
(no packing, no loss chunking). Writing the PEFT adapter is I/O and lives in `jaxlm.hf.peft`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models.layers import Embed, dense
from jaxlm.models.registry import architecture_of


class VirtualTokens(nnx.Variable):
    """The learned virtual-token embeddings [num_virtual_tokens, hidden]."""


class PromptTunedEmbed(nnx.Module):
    """An input token table plus virtual tokens at ids vocab_size .. vocab_size + n - 1."""

    def __init__(self, base, virtual_tokens: jax.Array):
        self.embedding = base.embedding  # the same Param under the same name
        self.virtual_tokens = VirtualTokens(virtual_tokens)

    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.embedding[...]
        vocab, count = table.shape[0], self.virtual_tokens[...].shape[0]
        real = jnp.take(table, jnp.minimum(ids, vocab - 1), axis=0)
        virtual = jnp.take(self.virtual_tokens[...].astype(table.dtype), jnp.clip(ids - vocab, 0, count - 1), axis=0)
        return jnp.where((ids >= vocab)[..., None], virtual, real)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the real vocabulary (a tied LM head): virtual tokens are never predicted."""
        return dense(x, self.embedding[...].astype(x.dtype).T)


def apply_prompt_tuning(model, num_virtual_tokens: int, *, seed: int = 0) -> None:
    """Give `model` (in place) `num_virtual_tokens` virtual tokens, initialised as PEFT's SAMPLE_VOCAB does:
    copies of randomly drawn real token embeddings (Lester et al. found that beats random vectors)."""
    arch = architecture_of(model)
    if not arch.family.causal_lm or not arch.family.token_embedding:
        raise ValueError(f"prompt tuning needs a causal LM; {arch.name} is not one")
    if num_virtual_tokens <= 0:
        raise ValueError(f"model.prompt_tuning.num_virtual_tokens must be positive, got {num_virtual_tokens}")
    if prompt_embed(model) is not None:
        raise ValueError(f"{arch.name} already has virtual tokens")
    parent, name = _parent(model, arch.family.token_embedding)
    base = getattr(parent, name)
    if type(base) is not Embed:  # e.g. an int8 output table, which the swap would drop
        raise ValueError(f"{arch.name}'s token table is a {type(base).__name__}: add virtual tokens before "
                         "quantizing (load_prompt_tuning_adapter, then quantize_int8)")
    table = base.embedding[...]
    drawn = jax.random.randint(jax.random.key(seed), (num_virtual_tokens,), 0, table.shape[0])
    setattr(parent, name, PromptTunedEmbed(base, table[drawn]))


def prompt_embed(model) -> PromptTunedEmbed | None:
    """The model's prompt-tuned token table, or None. Looked up where `add_prompt_tuning` puts it (the
    family's token embedding), not by walking every module: generation asks at each call."""
    path = architecture_of(model).family.token_embedding
    if not path:
        return None
    parent, name = _parent(model, path)
    embed = getattr(parent, name, None)
    return embed if isinstance(embed, PromptTunedEmbed) else None


def num_virtual_tokens(model) -> int:
    embed = prompt_embed(model)
    return 0 if embed is None else embed.virtual_tokens[...].shape[0]


def virtual_token_ids(model) -> list[int]:
    """The ids that stand for the virtual tokens ([] without prompt tuning); prompts start with them."""
    embed = prompt_embed(model)
    if embed is None:
        return []
    vocab = embed.embedding[...].shape[0]
    return list(range(vocab, vocab + embed.virtual_tokens[...].shape[0]))


def prepend_virtual_tokens(model, input_ids, positions, segment_ids):
    """(input_ids, positions, segment_ids, n): the batch with the model's n virtual tokens before every row.

    They take positions 0..n-1 and the row's first segment id, and the row's own positions move up by n.
    Each row must be one document (data.pack=false): a packed row's later documents would not see them."""
    ids = virtual_token_ids(model)
    if not ids:
        return input_ids, positions, segment_ids, 0
    n, batch = len(ids), input_ids.shape[0]
    virtual = jnp.broadcast_to(jnp.asarray(ids, input_ids.dtype), (batch, n))
    first_positions = jnp.broadcast_to(jnp.arange(n, dtype=positions.dtype), (batch, n))
    return (jnp.concatenate([virtual, input_ids], axis=1),
            jnp.concatenate([first_positions, positions + n], axis=1),
            jnp.concatenate([jnp.repeat(segment_ids[:, :1], n, axis=1), segment_ids], axis=1),
            n)


def _parent(model, path: str):
    *parents, name = path.split(".")
    for key in parents:
        model = getattr(model, key)
    return model, name
