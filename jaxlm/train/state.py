"""Training state and optimizer: what is trained, how, and what a checkpoint holds.

The model is split once into (graphdef, trainable, frozen, rest): with LoRA the trainable
part is only the `nnx.LoRAParam`s, so the base weights get neither gradients nor optimizer
state; with full fine-tuning it is every `nnx.Param`. `TrainState` is a plain pytree
(trainable params, Optax state, step, RNG) that jit donates and Orbax saves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from jaxlm.train.config import TrainConfig


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: nnx.State  # the trainable parameters (float32 master copy)
    opt_state: optax.OptState
    rng: jax.Array  # uint32 key data; step keys are fold_in(rng, step), so resume replays them
    bad_step: jax.Array  # int32: first step whose loss or gradients were not finite, -1 if none


def make_schedule(t: TrainConfig, final_fraction: float = 0.1) -> optax.Schedule:
    """Linear warmup from 0, then cosine/linear decay to `final_fraction` of the peak, or constant."""
    decay_steps = max(t.steps - t.warmup_steps, 1)
    peak, end = t.learning_rate, t.learning_rate * final_fraction
    if t.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=final_fraction)
    elif t.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if t.warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, peak, t.warmup_steps)
    return optax.join_schedules([warmup, decay], [t.warmup_steps])


def decay_mask(params):
    """Weight decay on matrices only (kernels, embeddings, LoRA factors); never on norms or biases."""
    return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def make_optimizer(t: TrainConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(t.max_grad_norm)] if t.max_grad_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=t.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def init_state(trainable: nnx.State, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=trainable,
        opt_state=tx.init(trainable),
        rng=jax.random.key_data(jax.random.key(seed)),
        bad_step=jnp.full((), -1, jnp.int32),
    )


def count_params(tree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))
