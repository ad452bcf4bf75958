"""How a model runs its repeated layers: a Python loop or one `lax.scan`, with or without
rematerialisation, in training and over a KV cache.

A model keeps its decoder layers either as an `nnx.List` (unrolled: HF's layout, one compiled
copy per layer) or, after `stack`, as a `Stack`: ONE layer module whose every variable has a
leading layer axis (scanned: XLA compiles one layer, so compile time stops growing with depth).
Hugging Face names stay at the edges: load and LoRA work on the unrolled model before it is
stacked, and export reads `unrolled(model)`. `remat` names a `jax.checkpoint` policy: what a
layer keeps for the backward pass instead of recomputing it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models.kv_cache import KVCache

# Variable metadata on stacked parameters: this axis indexes layers (sharding must never split it).
LAYER_AXIS = "layer_axis"
# model.remat: our short names, then jax.checkpoint_policies by their own names.
REMAT = {
    "none": None,
    "full": "nothing_saveable",  # keep only each layer's input; recompute the rest
    "dots": "dots_with_no_batch_dims_saveable",  # keep projection outputs; recompute norms, attention, activations
    **{name: name for name in ("everything_saveable", "nothing_saveable", "dots_saveable", "checkpoint_dots",
                               "dots_with_no_batch_dims_saveable", "checkpoint_dots_with_no_batch_dims")},
}


def remat_policy(name: str):
    """(remat?, policy) for a `model.remat` name."""
    if name not in REMAT:
        raise ValueError(f"model.remat={name!r} is not one of {', '.join(REMAT)}")
    return REMAT[name] is not None, getattr(jax.checkpoint_policies, REMAT[name] or "nothing_saveable")


def is_stacked(layers) -> bool:
    return isinstance(layers, Stack)


def run(layers, x, call, *, remat: str = "none", cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
    """x through every layer in order: `call(layer, x, layer_cache) -> (x, layer_cache)`. x is the hidden
    states [batch, new, dim], or a pytree whose first leaf they are (e.g. with a MoE's router statistics).

    Without a cache (training, scoring) each layer gets None and `remat` applies. With one
    (generation) each layer gets its `LayerCache` view; returns the final x and the cache
    advanced past the new tokens (None without one).
    """
    num_new = jax.tree.leaves(x)[0].shape[1]
    checkpointed, policy = remat_policy(remat)
    checkpointed = checkpointed and cache is None  # generation keeps nothing for a backward pass
    if not is_stacked(layers):
        written = []
        for i, layer in enumerate(layers):
            kv = None if cache is None else cache.layer(i)
            if checkpointed:  # the layer's variables enter as arguments, so the backward recomputes from them
                graphdef, state = nnx.split(layer)
                x = jax.checkpoint(lambda s, y: call(nnx.merge(graphdef, s), y, None)[0], policy=policy)(state, x)  # noqa: B023  called here
            else:
                x, kv = call(layer, x, kv)
            written.append(kv)
        if cache is None:
            return x, None
        keys, values = tuple(kv.keys for kv in written), tuple(kv.values for kv in written)
        return x, cache.advanced(keys, values, num_new)
    graphdef, state = nnx.split(layers.layer)
    if cache is None:
        def body(y, layer_state):
            return call(nnx.merge(graphdef, layer_state), y, None)[0], None

        if checkpointed:
            body = jax.checkpoint(body, policy=policy, prevent_cse=False)  # scan already keeps XLA from merging
        x, _ = jax.lax.scan(body, x, state)
        return x, None

    def cached_body(carry, xs):
        y, k, v = carry
        layer_state, i = xs
        y, kv = call(nnx.merge(graphdef, layer_state), y, dataclasses.replace(cache.layer(), keys=k, values=v, layer=i))
        return (y, kv.keys, kv.values), None

    (x, keys, values), _ = jax.lax.scan(cached_body, (x, cache.keys, cache.values), (state, jnp.arange(len(layers))))
    return x, cache.advanced(keys, values, num_new)


# --- stacking and unstacking -------------------------------------------------------------


class Stack(nnx.Module):
    """Decoder layers stacked for one `lax.scan`: `layer` is one layer whose every variable has a
    leading axis of `count` (marked LAYER_AXIS), so XLA compiles the layer once."""

    def __init__(self, layer: nnx.Module, count: int):
        self.layer, self.count = layer, count

    def __len__(self) -> int:
        return self.count


def stack(layers: nnx.List) -> Stack:
    """One `Stack` holding every variable of `layers` on a new leading axis."""
    parts = [nnx.split(layer) for layer in layers]
    graphdef = parts[0][0]
    if any(g != graphdef for g, _ in parts):
        raise ValueError("model.scan_layers: the layers differ in structure (e.g. LoRA on some layers only, "
                         "or a per-layer constant), so they cannot share one compiled layer")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(state for _, state in parts))
    module = nnx.merge(graphdef, stacked)
    for _, variable in nnx.iter_graph(module):
        if isinstance(variable, nnx.Variable):
            variable.set_metadata(**{LAYER_AXIS: 0})
    return Stack(module, len(parts))


def unstack(stacked: Stack) -> nnx.List:
    """The inverse of `stack`: one module per layer."""
    graphdef, state = nnx.split(stacked.layer)
    layers = []
    for i in range(stacked.count):
        layer = nnx.merge(graphdef, jax.tree.map(lambda x, i=i: x[i], state))
        for _, variable in nnx.iter_graph(layer):
            if isinstance(variable, nnx.Variable) and LAYER_AXIS in variable.get_metadata():
                variable.del_metadata(LAYER_AXIS)
        layers.append(layer)
    return nnx.List(layers)
