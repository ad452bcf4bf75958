"""Where arrays live: a ("data", "fsdp") device mesh and the rules that place parameters and batches.

Model code never names devices; everything about placement is here. The same rules run on
1 CPU, 8 GPUs or a TPU slice:

* batches are split along their batch dimension over both axes (FSDP is data parallel too);
* each parameter (and each optimizer-state leaf, which has the parameter's shape) is sharded
  along its largest dimension divisible by the fsdp size, and replicated if none is; the layer
  axis of stacked layers (`model.scan_layers`) is never split, so each device holds a slice of
  every layer and the scan runs the same program on all of them;
* scalars and small vectors are replicated.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxlm.errors import ConfigError
from jaxlm.models.scan import LAYER_AXIS

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1) -> Mesh:
    """A 2-D mesh over all devices; `data=-1` takes whatever `fsdp` leaves (ConfigError if they do not fit)."""
    data, fsdp = mesh_shape(data, fsdp, jax.device_count())
    return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))


def param_spec(shape: tuple[int, ...], fsdp: int, min_size: int = 2**10, keep: int | None = None) -> P:
    """Shard the largest dimension divisible by `fsdp` (never dimension `keep`); replicate small or
    indivisible arrays."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted((d for d in range(len(shape)) if d != keep), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(tree, mesh: Mesh):
    """NamedShardings for every array leaf of a parameter / optimizer-state pytree."""
    fsdp = mesh.shape["fsdp"]

    def place(node):
        if isinstance(node, nnx.Variable):  # optimizer moments keep their parameter's Variable and metadata
            keep = node.get_metadata().get(LAYER_AXIS)
            return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(np.shape(x), fsdp, keep=keep)), node)
        return NamedSharding(mesh, param_spec(np.shape(node), fsdp))

    return jax.tree.map(place, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, accumulated: bool) -> NamedSharding:
    """Batches are [batch, seq], or [accum, micro_batch, seq] when gradients are accumulated."""
    return NamedSharding(mesh, P(None, BATCH_AXES) if accumulated else P(BATCH_AXES))


def place(tree, shardings):
    """Each array of `tree` (the same on every process, e.g. loaded weights) on its sharding.

    One process: `jax.device_put`. Several: each process transfers only the shards its own devices
    hold, from its host copy; `device_put` would first check that every process holds the same
    value, gathering each whole array to every host.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(x, s):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # RNG keys travel as their raw data
            return jax.random.wrap_key_data(put(jax.random.key_data(x), s), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch(batch_size: int, grad_accum: int, mesh: Mesh) -> None:
    check_micro_batch(batch_size, grad_accum, mesh.shape["data"] * mesh.shape["fsdp"])


def mesh_shape(data: int, fsdp: int, device_count: int) -> tuple[int, int]:
    """(data, fsdp) sizes of the device mesh; `data=-1` takes every device fsdp leaves."""
    if fsdp < 1 or device_count % fsdp:
        raise ConfigError(f"mesh.fsdp={fsdp} must divide the {device_count} available devices")
    if data == -1:
        data = device_count // fsdp
    if data * fsdp != device_count:
        raise ConfigError(f"mesh.data={data} x mesh.fsdp={fsdp} = {data * fsdp} devices, "
                          f"but {device_count} are available")
    return data, fsdp


def check_micro_batch(batch_size: int, grad_accum: int, device_count: int) -> None:
    """Each micro-batch is split evenly over every device of the mesh."""
    micro = batch_size // grad_accum
    if micro % device_count:
        raise ConfigError(f"train.batch_size / train.grad_accum = {micro} sequences per micro-batch must be "
                          f"divisible by the {device_count} devices of the mesh (mesh.data x mesh.fsdp)")
