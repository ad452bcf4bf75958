"""The KV cache a causal LM's forward pass reads and extends when it is given one (generation).

`KVCache` holds every layer's keys and values for a fixed number of slots; `LayerCache` is one
layer's view of it, which `layers.attention` writes the new keys into and reads back. `scan.run`
hands each layer its view and advances the cache after the last layer.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    """Keys and values of every layer for a fixed number of slots.

    Slots are filled left to right; `valid[b, s]` says slot s of row b holds a real token (left
    padding of a batched prompt does not), and `index` is the next slot to write. Positions
    (for RoPE or learned embeddings) are passed separately, so left-padded rows keep their true
    positions. Each layer writes its new slots in place.

    Layout: [batch * kv_heads, slots, head_dim] per layer, which `layers.attention` reads as it
    lies: one matmul batch axis, then the slots. An unrolled model keeps one such array per layer;
    a scanned one stacks them on a leading layer axis that its scan indexes. The layout is
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

    def admit(self, new_valid: jax.Array | None, num_new: int) -> tuple[KVCache, jax.Array]:
        """Mark the next `num_new` slots (real where `new_valid` [batch, num_new] says so), before the layers
        write them so that the new tokens see themselves; returns the cache and the boolean mask
        [batch, 1, num_new, slots] of what each new token may attend to."""
        batch = self.valid.shape[0]
        new_valid = jnp.ones((batch, num_new), bool) if new_valid is None else new_valid.astype(bool)
        cache = dataclasses.replace(self, valid=jax.lax.dynamic_update_slice(self.valid, new_valid, (0, self.index)))
        slot = jnp.arange(self.num_slots)
        query_slot = self.index + jnp.arange(num_new)
        causal = slot[None, :] <= query_slot[:, None]
        return cache, causal[None, None] & cache.valid[:, None, None, :]

    # Continuous batching (`jaxlm.serve`) keeps one shared `index` and gives each request a row of its
    # own: these two place a request's prefilled row and reclaim slots, and live here because they
    # depend on the layout above (rows of kv_heads, a leading layer axis when stacked).

    def put_row(self, row: jax.Array, prefilled: KVCache, start: jax.Array) -> KVCache:
        """Write a one-row cache `prefilled` (its slots 0..n) into row `row` at slots start..start+n; the
        row's other slots become invalid, so what an earlier request left there is never read. (A cache of
        several rows, all slots, goes in the same way from `row` on.)"""
        kv_heads = self._kv_heads()

        def put(batch_array, row_array):
            offset = (0,) * (batch_array.ndim - 3) + (row * kv_heads, start, 0)
            return jax.lax.dynamic_update_slice(batch_array, row_array.astype(batch_array.dtype), offset)

        keys, values = jax.tree.map(put, (self.keys, self.values), (prefilled.keys, prefilled.values))
        cleared = jnp.zeros((prefilled.valid.shape[0], self.num_slots), bool)
        valid = jax.lax.dynamic_update_slice(self.valid, cleared, (row, 0))
        valid = jax.lax.dynamic_update_slice(valid, prefilled.valid, (row, start))
        return dataclasses.replace(self, keys=keys, values=values, valid=valid)

    def head(self, rows: int) -> KVCache:
        """The first `rows` rows (a copy), to decode fewer rows than the cache holds; `put_row(0, ...)` puts
        them back."""
        kv_heads = self._kv_heads()
        keys, values = jax.tree.map(lambda a: a[..., : rows * kv_heads, :, :], (self.keys, self.values))
        return dataclasses.replace(self, keys=keys, values=values, valid=self.valid[:rows])

    def shifted(self, amount: jax.Array) -> KVCache:
        """Every row moved `amount` slots to the left (the first `amount` slots dropped) and `index` with it:
        frees slots at the end once the oldest request still running starts `amount` slots in. A negative
        amount moves rows right, making room before `index` (slots from `index` on must be invalid)."""
        slots = self.num_slots
        keys, values = jax.tree.map(lambda a: jnp.roll(a, -amount, axis=-2), (self.keys, self.values))
        valid = jnp.roll(self.valid, -amount, axis=1) & (jnp.arange(slots) < slots - amount)[None]
        return dataclasses.replace(self, keys=keys, values=values, valid=valid, index=self.index - amount)

    def _kv_heads(self) -> int:
        some_keys = self.keys[0] if isinstance(self.keys, tuple) else self.keys
        return some_keys.shape[-3] // self.valid.shape[0]

    def layer(self, i: int | None = None) -> LayerCache:
        """Layer i's view (unrolled layers), or the stacked arrays for a scan to index (`LayerCache.layer`)."""
        if i is None:
            return LayerCache(self.keys, self.values, self.index)  # pyright: ignore[reportArgumentType]  stacked
        return LayerCache(self.keys[i], self.values[i], self.index)

    def advanced(self, keys, values, num_new: int) -> KVCache:
        """The cache with every layer's new keys/values written and `index` past the new slots."""
        return dataclasses.replace(self, keys=keys, values=values, index=self.index + num_new)


@struct.dataclass
class LayerCache:
    """One layer's view of the cache: write this layer's new keys/values at `index`, read all its slots.

    `keys`/`values` are this layer's arrays, or (in a scan) the stacked arrays and `layer` the index."""

    keys: jax.Array
    values: jax.Array
    index: jax.Array
    layer: jax.Array | None = None

    def write(self, k, v) -> LayerCache:
        """New keys/values [batch, new, kv_heads, head_dim] into slots index.. of this layer."""

        def put(cache, new):
            b, n, kv_heads, d = new.shape
            rows = new.swapaxes(1, 2).reshape(b * kv_heads, n, d).astype(cache.dtype)
            if self.layer is None:
                return jax.lax.dynamic_update_slice(cache, rows, (0, self.index, 0))
            return jax.lax.dynamic_update_slice(cache, rows[None], (self.layer, 0, self.index, 0))

        return dataclasses.replace(self, keys=put(self.keys, k), values=put(self.values, v))

    def read(self) -> tuple[jax.Array, jax.Array]:
        """(keys, values) [batch * kv_heads, slots, head_dim] of this layer."""
        if self.layer is None:
            return self.keys, self.values
        return self.keys[self.layer], self.values[self.layer]
