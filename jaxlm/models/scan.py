"""How a model runs its repeated layers: a Python loop or one `lax.scan`, with or without
rematerialisation, in training and over a KV cache.

A model keeps its decoder layers either as an `nnx.List` (unrolled: HF's layout, one compiled
copy per layer) or, after `stack`, as ONE layer module whose every variable has a leading
layer axis (scanned: XLA compiles one layer, so compile time stops growing with depth).
Hugging Face names stay at the edges: load and LoRA work on the unrolled model before it is
stacked, and export reads `unrolled(model)`. `remat` names a `jax.checkpoint` policy: what a
layer keeps for the backward pass instead of recomputing it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxlm.models.layers import Mask

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
    return not isinstance(layers, nnx.List)


def run(layers, x, call, *, remat: str = "none"):
    """x through every layer in order: `call(layer, x) -> x`."""
    checkpointed, policy = remat_policy(remat)
    if not is_stacked(layers):
        for layer in layers:
            if checkpointed:  # the layer's variables enter as arguments, so the backward recomputes from them
                graphdef, state = nnx.split(layer)
                x = jax.checkpoint(lambda s, y: call(nnx.merge(graphdef, s), y), policy=policy)(state, x)  # noqa: B023  called here
            else:
                x = call(layer, x)
        return x
    graphdef, state = nnx.split(layers)

    def body(y, layer_state):
        return call(nnx.merge(graphdef, layer_state), y), None

    if checkpointed:
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)  # scan already keeps XLA from merging
    x, _ = jax.lax.scan(body, x, state)
    return x


# --- KV cache ------------------------------------------------------------------------------


@struct.dataclass
class KVCache:
    """Keys and values of every layer for a fixed number of slots.

    Slots are filled left to right; `valid[b, s]` says slot s of row b holds a real token (left
    padding of a batched prompt does not), and `index` is the next slot to write. Positions
    (for RoPE or learned embeddings) are passed separately, so left-padded rows keep their true
    positions. Each layer writes its new slots in place.

    Layout: [batch * kv_heads, slots, head_dim] per layer, which `layers.cached_attention` reads as
    it lies: one matmul batch axis, then the slots. An unrolled model keeps one such array per
    layer; a scanned one stacks them on a leading layer axis that its scan indexes. The layout is
    XLA:CPU's due: slots before heads made it transpose every layer's whole cache at every decoding
    step, one stacked array for unrolled layers made it copy each layer's part out, and a separate
    batch axis (dropped by XLA when it is 1) kept the write from staying in place. Each cost tens
    of MB of copies per step for SmolLM2 at batch 8.
    """

    keys: tuple[jax.Array, ...] | jax.Array
    values: tuple[jax.Array, ...] | jax.Array
    valid: jax.Array  # [batch, slots] bool
    index: jax.Array  # int32 scalar

    @classmethod
    def create(cls, num_layers, batch, slots, kv_heads, head_dim, dtype=jnp.float32, *, stacked: bool = False):
        shape = (batch * kv_heads, slots, head_dim)
        if stacked:
            keys, values = (jnp.zeros((num_layers, *shape), dtype) for _ in range(2))
        else:
            keys, values = (tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)) for _ in range(2))
        return cls(keys=keys, values=values, valid=jnp.zeros((batch, slots), bool), index=jnp.zeros((), jnp.int32))

    @property
    def num_slots(self) -> int:
        return self.valid.shape[1]


@struct.dataclass
class LayerCache:
    """One layer's view of the cache: write this layer's new keys/values, read all its slots.

    `keys`/`values` are this layer's arrays, or (in a scan) the stacked arrays and `layer` the index."""

    keys: jax.Array
    values: jax.Array
    layer: jax.Array | None = None

    def write(self, k, v, index) -> LayerCache:
        """New keys/values [batch, new, kv_heads, head_dim] into slots index.. of this layer."""

        def put(cache, new):
            b, n, kv_heads, d = new.shape
            rows = new.swapaxes(1, 2).reshape(b * kv_heads, n, d).astype(cache.dtype)
            if self.layer is None:
                return jax.lax.dynamic_update_slice(cache, rows, (0, index, 0))
            return jax.lax.dynamic_update_slice(cache, rows[None], (self.layer, 0, index, 0))

        return dataclasses.replace(self, keys=put(self.keys, k), values=put(self.values, v))

    def read(self) -> tuple[jax.Array, jax.Array]:
        """(keys, values) [batch * kv_heads, slots, head_dim] of this layer: `layers.cached_attention`'s input."""
        if self.layer is None:
            return self.keys, self.values
        return self.keys[self.layer], self.values[self.layer]


def cached_mask(cache: KVCache, num_new: int) -> jax.Array:
    """Boolean mask [batch, 1, new, slots] for `num_new` tokens written at `cache.index`."""
    slot = jnp.arange(cache.num_slots)
    query_slot = cache.index + jnp.arange(num_new)
    causal = slot[None, :] <= query_slot[:, None]
    return causal[None, None] & cache.valid[:, None, None, :]


def run_with_cache(layers, x, cache: KVCache, new_valid, call):
    """New tokens x [batch, n, dim] through every layer, entering the cache at `cache.index`.

    `call(layer, x, mask, layer_cache, index) -> (x, layer_cache)`. Returns the final
    hidden states and the cache advanced by n slots.
    """
    num_new = x.shape[1]
    new_valid = jnp.ones(x.shape[:2], bool) if new_valid is None else new_valid.astype(bool)
    # Mark the new slots before the layers run, so the new tokens see themselves.
    cache = dataclasses.replace(cache, valid=jax.lax.dynamic_update_slice(cache.valid, new_valid, (0, cache.index)))
    mask = Mask(dense=cached_mask(cache, num_new), offset=cache.index)  # for layers.cached_attention
    keys, values = cache.keys, cache.values
    if not is_stacked(layers):
        written = []
        for layer, k, v in zip(layers, keys, values, strict=True):
            x, kv = call(layer, x, mask, LayerCache(k, v), cache.index)
            written.append(kv)
        keys, values = tuple(kv.keys for kv in written), tuple(kv.values for kv in written)
    else:
        graphdef, state = nnx.split(layers)

        def body(carry, xs):
            y, k, v = carry
            layer_state, i = xs
            y, kv = call(nnx.merge(graphdef, layer_state), y, mask, LayerCache(k, v, i), cache.index)
            return (y, kv.keys, kv.values), None

        layer_count = keys.shape[0]  # pyright: ignore[reportAttributeAccessIssue]  stacked: one array, not a tuple
        (x, keys, values), _ = jax.lax.scan(body, (x, keys, values), (state, jnp.arange(layer_count)))
    return x, dataclasses.replace(cache, keys=keys, values=values, index=cache.index + num_new)


# --- stacking and unstacking -------------------------------------------------------------


def stack(layers: nnx.List) -> nnx.Module:
    """One module with every variable of `layers` stacked on a new leading axis (marked LAYER_AXIS)."""
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
    return module


def unstack(module) -> nnx.List:
    """The inverse of `stack`: one module per layer."""
    graphdef, state = nnx.split(module)
    count = jax.tree.leaves(state)[0].shape[0]
    layers = []
    for i in range(count):
        layer = nnx.merge(graphdef, jax.tree.map(lambda x, i=i: x[i], state))
        for _, variable in nnx.iter_graph(layer):
            if isinstance(variable, nnx.Variable) and LAYER_AXIS in variable.get_metadata():
                variable.del_metadata(LAYER_AXIS)
        layers.append(layer)
    return nnx.List(layers)
