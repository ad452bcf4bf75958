"""The causal-LM contract: what sampling, training, eval and prompt tuning call on a model that
generates text. Whether a model is one is a fact of its registry row (`Family.causal_lm`, asked
through `is_causal_lm`), never a guess from its attributes; every class of such a row provides
`CausalLM` (tests/test_models.py checks both agree).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

from jaxlm.models.registry import ARCHITECTURES
from jaxlm.models.scan import KVCache


@runtime_checkable
class CausalLM(Protocol):
    config: Any  # the family's config dataclass (models/registry.py: `Family.config`)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 lengths: jax.Array | None = None, return_hidden: bool = False) -> jax.Array:
        """Logits [batch, seq, vocab] (or the final hidden states [batch, seq, hidden])."""
        ...

    def decode(self, input_ids: jax.Array, positions: jax.Array, cache: KVCache,
               new_valid: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """New tokens [batch, n] through the cache: (logits [batch, n, vocab], the cache after them)."""
        ...

    def init_cache(self, batch: int, slots: int, dtype: Any = ...) -> KVCache:
        ...

    def logits(self, hidden: jax.Array) -> jax.Array:
        """The output projection of final hidden states [..., hidden] to [..., vocab]."""
        ...

    def output_kernel(self) -> jax.Array | None:
        """The output projection as one [hidden, vocab] matrix, or None when it is not one."""
        ...


def is_causal_lm(model) -> bool:
    """Whether `model` generates text, as its family's registry row says (False for what is no jaxlm model)."""
    arch = ARCHITECTURES.get(type(model).__name__)
    return arch is not None and type(model) is arch.model_cls and arch.family.causal_lm
