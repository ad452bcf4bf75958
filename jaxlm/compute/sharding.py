"""Where arrays live: a ("data", "fsdp", "expert") device mesh and the rules that place parameters and batches.

Model code never names devices; everything about placement is here. The same rules run on
1 CPU, 8 GPUs or a TPU slice:

* batches are split along their batch dimension over all three axes (FSDP and expert parallelism
  are data parallel too);
* a mixture of experts' parameters (marked `EXPERT_AXIS` by the model) are split along their expert
  axis over the "expert" axis: each device of it holds experts / mesh.expert of every layer's experts,
  and the model sends the tokens to them all-to-all (models/expert_parallel.py: the steps are traced
  under their mesh, `traced_under`, where it finds the axis);
* each parameter (and each optimizer-state leaf, which has the parameter's shape) is sharded
  along its largest dimension divisible by the fsdp size (not the expert axis), and replicated if
  none is; the layer axis of stacked layers (`model.scan_layers`) is never split, so each device
  holds a slice of every layer and the scan runs the same program on all of them;
* scalars and small vectors are replicated.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxlm.errors import ConfigError
from jaxlm.models.expert_parallel import EXPERT_AXIS
from jaxlm.models.scan import LAYER_AXIS

BATCH_AXES = ("data", "fsdp", "expert")


def make_mesh(data: int = -1, fsdp: int = 1, expert: int = 1) -> Mesh:
    """A 3-D mesh over all devices; `data=-1` takes whatever `fsdp` x `expert` leave (ConfigError if they do
    not fit)."""
    shape = mesh_shape(data, fsdp, jax.device_count(), expert)
    return jax.make_mesh(shape, ("data", "fsdp", "expert"), axis_types=(AxisType.Auto,) * 3)


def param_spec(shape: tuple[int, ...], fsdp: int, min_size: int = 2**10, keep: int | None = None,
               expert: int = 1, expert_dim: int | None = None) -> P:
    """Dimension `expert_dim` (a mixture's expert axis) over the `expert` devices; then the largest dimension
    divisible by `fsdp` (never dimension `keep` nor the expert axis); replicate small or indivisible arrays."""
    spec: list[str | None] = [None] * len(shape)
    if expert > 1 and expert_dim is not None:
        spec[expert_dim] = "expert"
    if fsdp > 1 and int(np.prod(shape, dtype=np.int64)) >= min_size:
        for dim in sorted((d for d in range(len(shape)) if d not in (keep, expert_dim)), key=lambda d: -shape[d]):
            if shape[dim] % fsdp == 0:
                spec[dim] = "fsdp"
                break
    return P(*spec) if any(spec) else P()


def state_shardings(tree, mesh: Mesh):
    """NamedShardings for every array leaf of a parameter / optimizer-state pytree."""
    fsdp, expert = mesh.shape["fsdp"], dict(mesh.shape).get("expert", 1)

    def place(node):
        if isinstance(node, nnx.Variable):  # optimizer moments keep their parameter's Variable and metadata
            metadata = node.get_metadata()
            keep = metadata.get(LAYER_AXIS)
            expert_dim = metadata.get(EXPERT_AXIS)
            if expert_dim is not None:
                expert_dim += 0 if keep is None else 1  # behind the stacked layers' axis

            def spec(x):
                if expert_dim is not None and np.shape(x)[expert_dim] % expert:
                    raise ConfigError(f"mesh.expert={expert} must divide the {np.shape(x)[expert_dim]} experts "
                                      "of each mixture-of-experts layer")
                return NamedSharding(mesh, param_spec(np.shape(x), fsdp, keep=keep, expert=expert,
                                                      expert_dim=expert_dim))

            return jax.tree.map(spec, node)
        return NamedSharding(mesh, param_spec(np.shape(node), fsdp))

    return jax.tree.map(place, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, accumulated: bool, steps: bool = False) -> NamedSharding:
    """Batches are [batch, seq], or [accum, micro_batch, seq] when gradients are accumulated; `steps`: one
    batch per optimizer step of a call ([steps, ...] before those)."""
    return NamedSharding(mesh, P(*(None,) * (accumulated + steps), BATCH_AXES))


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


def traced_under(mesh: Mesh, fn):
    """`fn`, traced with `mesh` as its context's mesh (`jax.sharding.get_abstract_mesh()`): where a mixture of
    experts finds the axis its tokens are exchanged over (models/expert_parallel.py). Jit the result."""

    @functools.wraps(fn)
    def under_mesh(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)

    return under_mesh


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch(batch_size: int, grad_accum: int, mesh: Mesh, group_size: int = 1) -> None:
    check_micro_batch(batch_size, grad_accum, mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"],
                      group_size)


def mesh_shape(data: int, fsdp: int, device_count: int, expert: int = 1) -> tuple[int, int, int]:
    """(data, fsdp, expert) sizes of the device mesh; `data=-1` takes every device fsdp x expert leave."""
    for key, size in (("fsdp", fsdp), ("expert", expert)):
        if size < 1 or device_count % size:
            raise ConfigError(f"mesh.{key}={size} must divide the {device_count} available devices")
    if data == -1:
        data = max(1, device_count // (fsdp * expert))
    if data * fsdp * expert != device_count:
        sizes = f"mesh.data={data} x mesh.fsdp={fsdp}" + (f" x mesh.expert={expert}" if expert > 1 else "")
        raise ConfigError(f"{sizes} = {data * fsdp * expert} devices, but {device_count} are available")
    return data, fsdp, expert


def check_micro_batch(batch_size: int, grad_accum: int, device_count: int, group_size: int = 1) -> None:
    """Each micro-batch is split evenly over every device of the mesh (grpo: the `group_size` completions of
    each of batch_size prompts)."""
    micro = batch_size * group_size // grad_accum
    if micro % device_count:
        what = "train.batch_size" + (f" x grpo.group_size={group_size}" if group_size > 1 else "")
        raise ConfigError(f"{what} / train.grad_accum = {micro} sequences per micro-batch must be "
                          f"divisible by the {device_count} devices of the mesh (mesh.data x mesh.fsdp x mesh.expert)")
