"""The model contract: what sampling, training, eval, quantisation and prompt tuning call on a model.

`CausalLM` is a model that generates text. Whether a model is one is a fact of its registry row
(`Family.causal_lm`, asked through `is_causal_lm`), never a guess from its attributes; every class
of such a row provides `CausalLM` (tests/test_models.py checks both agree). How any model runs
(attention kernel, remat, stacked layers) is its one frozen `execution.Execution`; `configure`
gives a loaded model another one, and `unrolled` the per-layer view HF names need.
"""

from __future__ import annotations

from typing import Any, Protocol, overload, runtime_checkable

import jax
from flax import nnx

from jaxlm.models import scan
from jaxlm.models.execution import Execution
from jaxlm.models.kv_cache import KVCache
from jaxlm.models.registry import ARCHITECTURES, architecture_of


@runtime_checkable
class CausalLM(Protocol):
    """A model that generates text. Its ONE forward pass, `model(input_ids, attention_mask, ...)`, gives
    logits [batch, seq, vocab] (the final hidden states with `return_hidden=True`).

    `attention_mask` [batch, seq] marks real tokens (1) and padding (0). Without a cache (training,
    scoring) the positions default from it, and `segment_ids` (packed documents) or `lengths` (each
    row one sequence from position 0) may describe the rows instead (see layers.Mask). With a
    `cache` (`init_cache`; generation) the tokens enter it at its index, `positions` must be given,
    and the result is (logits, the cache after them)."""

    config: Any  # the family's config dataclass (models/registry.py: `Family.config`)
    execution: Execution

    @overload
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 lengths: jax.Array | None = None, cache: None = None, return_hidden: bool = False) -> jax.Array: ...

    @overload
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 lengths: jax.Array | None = None, cache: KVCache, return_hidden: bool = False,
                 ) -> tuple[jax.Array, KVCache]: ...

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


def _layers_attribute(model) -> str | None:
    return architecture_of(model).family.layers


def is_stacked(model) -> bool:
    """Whether `model`'s decoder layers are a `scan.Stack` (model.scan_layers)."""
    name = _layers_attribute(model)
    return name is not None and scan.is_stacked(getattr(model, name))


def configure(model, execution: Execution):
    """Give a loaded `model` (in place) this execution: its one `execution` object, and its layers
    stacked or not. Loading, LoRA and export work in HF's per-layer layout, so a model is loaded
    unrolled and configured afterwards."""
    name = _layers_attribute(model)
    if name is None and (execution.scan_layers or execution.remat != "none"):
        raise ValueError(f"model.scan_layers / model.remat: {type(model).__name__} has no stack of decoder layers "
                         "to scan or rematerialise (supported: the causal LM families)")
    model.execution = execution
    if name is not None and execution.scan_layers != is_stacked(model):
        layers = getattr(model, name)
        setattr(model, name, scan.stack(layers) if execution.scan_layers else scan.unstack(layers))
    return model


def unrolled(model):
    """`model` itself if its layers are unrolled, else a copy with them unstacked (HF's per-layer layout)."""
    if not is_stacked(model):
        return model
    copy = nnx.clone(model)
    name = _layers_attribute(copy)
    assert name is not None  # a stacked model has its stack
    setattr(copy, name, scan.unstack(getattr(copy, name)))
    return copy
