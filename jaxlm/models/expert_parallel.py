"""Expert parallelism: a mixture's experts split over one axis of the device mesh, and the tokens sent
to the devices holding their experts all-to-all, instead of every device gathering every expert.

The mesh is the one the step is traced under (`jax.sharding.get_abstract_mesh()`); the model only
names the axis (`Execution.expert_axis`). Inside `jax.shard_map` over the whole mesh each device
holds its own tokens (the batch is split over every mesh axis, as compute/sharding.py lays it out)
and experts / axis-size experts of each layer (another split of theirs, e.g. fsdp's, is gathered on
the way in, as FSDP gathers any weight). Each device

1. sorts its (token, choice) rows by expert, hence by the device holding the expert;
2. sends each device its rows in one `all_to_all` over the axis. The buffers have fixed worst-case
   sizes (every row of a device may go to one device: dropless, no capacity factor), and
   `grouped_matmul` skips the empty tail, so the work follows the rows received, not the buffer.
   (`jax.lax.ragged_all_to_all` would send only the rows, but XLA:CPU cannot run it in jax 0.10);
3. runs its experts on the rows received, grouped by expert;
4. sends the results back by the reverse exchange and sums each token's k results with the router's
   weights.

The backward pass is the same exchanges transposed. Where there is nothing to exchange (no such axis
in the mesh, or of size 1) or the tokens do not split evenly over the mesh (a small generation
batch), the experts run where the tokens are, as without expert parallelism.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

# Metadata on the experts' parameters: the axis that indexes the experts (before any stacked-layer axis),
# which expert parallelism splits (here, and compute/sharding.py when it places them).
EXPERT_AXIS = "expert_axis"


def sort_by_expert(chosen: jax.Array, num_experts: int) -> tuple[jax.Array, jax.Array]:
    """chosen [tokens, k] experts -> (order, sizes): the flattened (token, choice) rows in expert order
    (row r is token r // k's choice r % k) and how many rows each expert has [num_experts]."""
    flat = chosen.reshape(-1)
    return jnp.argsort(flat, stable=True), jnp.bincount(flat, length=num_experts).astype(jnp.int32)


def combine(out: jax.Array, order: jax.Array, weights: jax.Array, tokens: int) -> jax.Array:
    """out [rows, dim] in `order` (see `sort_by_expert`) -> [tokens, dim]: each token's rows summed with
    the router's weights [tokens, k]."""
    k = weights.shape[1]
    weighted = out * weights.reshape(-1)[order, None].astype(out.dtype)
    return jnp.zeros((tokens, out.shape[1]), out.dtype).at[order // k].add(weighted)


def grouped(experts, x: jax.Array, chosen: jax.Array, weights: jax.Array, axis: str) -> jax.Array:
    """`experts.grouped(x, chosen, weights)` (x [tokens, dim]; chosen, weights [tokens, k]) with the experts
    split over mesh axis `axis` and the rows exchanged all-to-all (see the module's docstring)."""
    mesh = jax.sharding.get_abstract_mesh()
    devices = dict(mesh.shape).get(axis, 1)
    if devices == 1 or x.shape[0] % mesh.size or experts.num_experts % devices:
        return experts.grouped(x, chosen, weights)
    graphdef, state = nnx.split(experts)

    def spec(variable: nnx.Variable) -> P:
        dim = variable.get_metadata().get(EXPERT_AXIS)
        return P() if dim is None else P(*[None] * dim, axis)

    specs = jax.tree.map(spec, state, is_leaf=lambda v: isinstance(v, nnx.Variable))
    tokens = P(tuple(mesh.axis_names))  # the batch's split: over every axis

    def local(state, x, chosen, weights):
        return _exchanged(nnx.merge(graphdef, state), x, chosen, weights, axis, devices)

    # check_vma=False: grouped_matmul's skipped tiles are zeros that vary over no axis, the computed ones over
    # all, which a lax.cond with the check on refuses. The gradients are the same: the experts' cotangents are
    # summed over the axes they are not split over, as the check would have them.
    return jax.shard_map(local, mesh=mesh, in_specs=(specs, tokens, tokens, tokens), out_specs=tokens,
                         check_vma=False)(state, x, chosen, weights)


def _exchanged(experts, x, chosen, weights, axis: str, devices: int) -> jax.Array:
    """One device's part: its tokens x [tokens, dim], their choices among all the experts, `experts` its own
    (the axis's device i holds experts i * local ... (i + 1) * local - 1)."""
    local = experts.num_experts
    rows = chosen.size  # the most any device can send to one device: all its rows
    order, sizes = sort_by_expert(chosen, local * devices)
    to_device = sizes.reshape(devices, local)  # [device, its expert]: the rows sent there
    sent = jnp.sum(to_device, axis=1)
    first_sent = jnp.cumsum(sent) - sent
    device = jnp.repeat(jnp.arange(devices), sent, total_repeat_length=rows)  # of each row in `order`
    slot = device * rows + jnp.arange(rows) - first_sent[device]  # its place in the send buffer
    send = jnp.zeros((devices * rows, x.shape[1]), x.dtype).at[slot].set(x[order // chosen.shape[1]],
                                                                         unique_indices=True)
    received = jax.lax.all_to_all(send, axis, 0, 0, tiled=True)  # block s: device s's rows for my experts
    counts = jax.lax.all_to_all(to_device, axis, 0, 0, tiled=True)  # [source, my expert]
    # each received row's expert; a block's unused tail gets `local`, sorted after every expert
    ends = jnp.cumsum(counts, axis=1)
    expert = jax.vmap(lambda e: jnp.searchsorted(e, jnp.arange(rows), side="right"))(ends).reshape(-1)
    by_expert = jnp.argsort(expert, stable=True)
    out = experts.mlp(received[by_expert], jnp.sum(counts, axis=0))
    out = jnp.zeros_like(out).at[by_expert].set(out, unique_indices=True)  # back in the received layout
    returned = jax.lax.all_to_all(out, axis, 0, 0, tiled=True)  # block d: device d's results for my rows
    return combine(returned[slot], order, weights, x.shape[0])
