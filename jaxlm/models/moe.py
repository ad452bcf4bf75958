"""A mixture-of-experts MLP: a router picks k experts per token, each a SwiGLU MLP, and their
outputs are summed with the router's weights (Mixtral, Qwen3-MoE).

Dropless and grouped: every (token, expert) pair is computed, none dropped for capacity. The
pairs are sorted by expert and each projection is one `grouped_matmul` over the expert groups, so
the work is k tokens' worth of MLP, not num_experts' worth (`dense`, which runs every expert on
every token and zeroes the unchosen, is kept as the reference the tests compare with).

With the experts split over a mesh axis (`Execution.expert_axis`) the rows travel to the devices holding
their experts and back, all-to-all (`models/expert_parallel.py`).

The router also reports what the load-balancing loss needs (`RouterStats`), summed over the
layers by the model and turned into transformers' auxiliary loss by `load_balancing_loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxlm.models import expert_parallel, layers
from jaxlm.models.expert_parallel import EXPERT_AXIS, combine, sort_by_expert


def expert_variable(value: jax.Array, kind: type[nnx.Variable] = nnx.Param) -> nnx.Variable:
    """A variable whose leading axis indexes the experts, marked so (`EXPERT_AXIS`)."""
    variable = kind(value)
    variable.set_metadata(EXPERT_AXIS, 0)
    return variable


@struct.dataclass
class RouterStats:
    """Sums over the real tokens of every MoE layer so far: how often each expert was chosen (among
    the k per token), its routing probability, how many token rows were routed, and the squared
    log-partition function of the router's logits (the z-loss's); and each sparse layer's choices
    apart (`load`, a row per sparse layer, filled in order: `layer` is the next row)."""

    chosen: jax.Array  # [experts] float32
    probability: jax.Array  # [experts] float32
    rows: jax.Array  # float32 scalar
    squared_logsumexp: jax.Array  # float32 scalar
    load: jax.Array  # [sparse layers, experts] float32
    layer: jax.Array  # int32 scalar

    @classmethod
    def zeros(cls, num_experts: int, sparse_layers: int) -> RouterStats:
        experts, scalar = jnp.zeros(num_experts, jnp.float32), jnp.zeros((), jnp.float32)
        return cls(experts, experts, scalar, scalar, jnp.zeros((sparse_layers, num_experts), jnp.float32),
                   jnp.zeros((), jnp.int32))

    def add_layer(self, chosen, probability, rows, squared_logsumexp) -> RouterStats:
        return RouterStats(self.chosen + chosen, self.probability + probability, self.rows + rows,
                           self.squared_logsumexp + squared_logsumexp, self.load.at[self.layer].set(chosen),
                           self.layer + 1)

    def expert_shares(self) -> jax.Array:
        """[sparse layers, experts]: each expert's share of its layer's routing choices (a row sums to 1)."""
        return self.load / jnp.maximum(jnp.sum(self.load, axis=-1, keepdims=True), 1.0)


def load_balancing_loss(stats: RouterStats) -> jax.Array:
    """Switch Transformer's auxiliary loss as transformers computes it over all layers' router logits
    (`load_balancing_loss_func`): num_experts * sum_e (share of choices of e) * (mean probability of e)."""
    rows = jnp.maximum(stats.rows, 1.0)
    return stats.chosen.shape[0] * jnp.sum((stats.chosen / rows) * (stats.probability / rows))


def router_z_loss(stats: RouterStats) -> jax.Array:
    """ST-MoE's router z-loss (Zoph et al. 2022), over all layers' token rows as transformers' Switch
    Transformers computes it (`router_z_loss_func` on the layers' logits together): the mean over the
    rows of logsumexp(router logits)^2. It keeps the logits small, which steadies training in bfloat16."""
    return stats.squared_logsumexp / jnp.maximum(stats.rows, 1.0)


def grouped_matmul(rows: jax.Array, kernels, sizes: jax.Array, multiply=jnp.matmul) -> jax.Array:
    """rows [m, in] sorted by group, `sizes[g]` of them in group g; kernels [groups, in, out] -> [m, out],
    each row times its group's kernel. The sizes may sum to less than m: the rows past them are padding
    (a worst-case buffer, as expert parallelism receives) and come out zero. `kernels` may be any pytree
    of arrays with a leading groups axis that `multiply(rows of one group, that group's slice of kernels)`
    takes (int8 experts pass their int8 rows and scales with `quant.int8_matmul`).

    Each group is padded to whole tiles, and one `lax.scan` multiplies a tile at a time by its group's
    kernel; the tiles past the last used one are skipped (a `lax.cond`, a real branch on CPU and GPU), so
    the work is the rows the sizes count, plus under a tile of padding per group, forward and backward,
    however large the buffer. Each tile is rematerialised in the backward pass: otherwise the scan would
    keep every tile's slice of the kernels, [tiles, in, out], for it.
    `jax.lax.ragged_dot` computes the same, but XLA lowers it on CPU (and on GPU in jaxlib 0.10) to
    zero-padded dense matmuls over every group: slower than even the dense form (scripts/bench_moe.py
    --ragged-dot measures all three)."""
    m, groups = rows.shape[0], jax.tree.leaves(kernels)[0].shape[0]
    tile = max(8, min(64, 1 << max(0, (m // groups).bit_length() - 1)))  # small batches (decoding): small tiles
    padded_sizes = (sizes + tile - 1) // tile * tile
    starts, padded_starts = jnp.cumsum(sizes) - sizes, jnp.cumsum(padded_sizes) - padded_sizes
    tiles = -(-(m + groups * (tile - 1)) // tile)  # enough for any split of m rows into the groups
    group = jnp.repeat(jnp.arange(groups), sizes, total_repeat_length=m)
    counted = jnp.arange(m) < jnp.sum(sizes)
    # each row's slot in the padded layout; padding rows none (dropped when placed, zero when read back)
    place = jnp.where(counted, padded_starts[group] + jnp.arange(m) - starts[group], tiles * tile)
    padded = jnp.zeros((tiles * tile, rows.shape[1]), rows.dtype).at[place].set(rows, mode="drop")
    tile_group = jnp.searchsorted(jnp.cumsum(padded_sizes), jnp.arange(tiles) * tile, side="right")
    tile_group = jnp.minimum(tile_group, groups - 1)  # the unused tiles at the end: skipped
    used_tiles = jnp.sum(padded_sizes) // tile

    @jax.checkpoint
    def one_tile(x, g, index):
        # The kernel sliced outside the cond: a branch given all the kernels copies them, every tile (on CPU).
        kernel = jax.tree.map(lambda k: k[g], kernels)
        out = jax.eval_shape(multiply, x, kernel)
        return jax.lax.cond(index < used_tiles, multiply, lambda *_: jnp.zeros(out.shape, out.dtype), x, kernel)

    _, out = jax.lax.scan(lambda _, xs: (None, one_tile(*xs)), None,
                          (padded.reshape(tiles, tile, -1), tile_group, jnp.arange(tiles)))
    return out.reshape(tiles * tile, -1).at[place].get(mode="fill", fill_value=0)


class Experts(nnx.Module):
    """num_experts SwiGLU MLPs as three stacked kernels [experts, in, out], under the HF module names
    `names` = (gate, up, down): ("gate_proj", "up_proj", "down_proj") for Qwen, ("w1", "w3", "w2") for Mixtral."""

    def __init__(self, num_experts: int, dim: int, hidden: int, names: tuple[str, str, str], *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        init = nnx.initializers.normal(0.02)
        shapes = ((dim, hidden), (dim, hidden), (hidden, dim))
        for name, shape in zip(names, shapes, strict=True):
            setattr(self, name, expert_variable(init(rngs.params(), (num_experts, *shape), param_dtype)))
        self.names = names

    @property
    def num_experts(self) -> int:
        return getattr(self, self.names[0])[...].shape[0]

    def kernels(self, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The (gate, up, down) kernels [experts, in, out] that `dense` multiplies by."""
        return tuple(getattr(self, name)[...].astype(dtype) for name in self.names)  # pyright: ignore[reportReturnType]

    def project(self, name: str, rows: jax.Array, sizes: jax.Array) -> jax.Array:
        """rows [m, in] sorted by expert, `sizes[e]` of them expert e's -> [m, out], through projection `name`."""
        return grouped_matmul(rows, getattr(self, name)[...].astype(rows.dtype), sizes)

    def mlp(self, rows: jax.Array, sizes: jax.Array) -> jax.Array:
        """rows [m, dim] sorted by expert, `sizes[e]` of them expert e's (the rest, if they sum to less, padding:
        zero out) -> each row through its expert's MLP [m, dim]."""
        gate, up, down = self.names
        hidden = jax.nn.silu(self.project(gate, rows, sizes)) * self.project(up, rows, sizes)
        return self.project(down, hidden, sizes)

    def grouped(self, x: jax.Array, experts: jax.Array, weights: jax.Array) -> jax.Array:
        """x [tokens, dim]; experts, weights [tokens, k]: sum_j weights[t, j] * MLP_{experts[t, j]}(x[t])."""
        order, sizes = sort_by_expert(experts, self.num_experts)
        return combine(self.mlp(x[order // experts.shape[1]], sizes), order, weights, x.shape[0])

    def dense(self, x: jax.Array, experts: jax.Array, weights: jax.Array) -> jax.Array:
        """The same sum with every expert run on every token (the reference for `grouped`)."""
        gate, up, down = self.kernels(x.dtype)
        every = jax.nn.silu(jnp.einsum("td,edh->teh", x, gate)) * jnp.einsum("td,edh->teh", x, up)
        every = jnp.einsum("teh,ehd->ted", every, down)
        share = jnp.zeros((x.shape[0], gate.shape[0]), x.dtype)
        share = share.at[jnp.arange(x.shape[0])[:, None], experts].add(weights.astype(x.dtype))
        return jnp.einsum("ted,te->td", every, share)


class SparseMoE(nnx.Module):
    """The router (`gate`, a linear layer to one logit per expert, HF's name) and the experts.

    Routing as transformers: softmax over all experts in float32, the top k, renormalised over the
    k when `normalize` (Mixtral always; Qwen3-MoE when `norm_topk_prob`)."""

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int, normalize: bool,
                 names: tuple[str, str, str], *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.gate = layers.linear(rngs, dim, num_experts, bias=False, param_dtype=param_dtype)
        self.experts = Experts(num_experts, dim, hidden, names, rngs=rngs, param_dtype=param_dtype)
        self.top_k, self.normalize = top_k, normalize

    def __call__(self, x: jax.Array, real: jax.Array | None, stats: RouterStats | None,
                 expert_axis: str = "") -> tuple[jax.Array, RouterStats | None]:
        """x [batch, seq, dim]; `stats`: the statistics so far, to which this layer's are added (None: none are
        kept, as in generation); `real` [batch, seq] marks the tokens they count (None: all); `expert_axis`:
        the mesh axis the experts are split over, the tokens sent to them over it (`models/expert_parallel.py`;
        "": the experts run where the tokens are)."""
        b, t, d = x.shape
        flat = x.reshape(b * t, d)
        logits = self.gate(flat).astype(jnp.float32)
        probabilities = jax.nn.softmax(logits, axis=-1)
        weights, experts = jax.lax.top_k(probabilities, self.top_k)
        if self.normalize:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
        if expert_axis:
            out = expert_parallel.grouped(self.experts, flat, experts, weights, expert_axis)
        else:
            out = self.experts.grouped(flat, experts, weights)
        out = out.reshape(b, t, d)
        if stats is None:
            return out, None
        counted = jnp.ones(b * t, jnp.float32) if real is None else real.reshape(-1).astype(jnp.float32)
        chosen = jnp.zeros(probabilities.shape[-1], jnp.float32).at[experts].add(counted[:, None])
        squared_logsumexp = jnp.sum(counted * jax.nn.logsumexp(logits, axis=-1) ** 2)
        return out, stats.add_layer(chosen, jnp.sum(probabilities * counted[:, None], axis=0), jnp.sum(counted),
                                    squared_logsumexp)
