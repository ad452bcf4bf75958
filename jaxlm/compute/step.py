"""The jit-compiled train and eval steps.

One `jax.jit` over plain pytrees (`nnx.merge` happens inside the trace, never on the hot
path in Python). The state is donated, so parameters and optimizer state update in place;
shardings are fixed on the way in and out, so FSDP layouts never drift. Gradient
accumulation is a `lax.scan` over micro-batches inside the step. In bfloat16 mode the
float32 master weights are cast inside the step and the loss is computed in float32.
A non-finite loss or gradient skips the update and records the step in `bad_step`;
the loop checks it whenever it syncs, so a bad update never reaches a checkpoint.

Both steps take a `reference` last: the parameters of the starting model where the loss compares with it
(dpo, train.kl_to_base) and the trainable parameters are more than LoRA adapters (a frozen copy), else None.
Under LoRA alone the reference is the same parameters with the adapters off (zeros), which costs nothing.
The train step also takes a `teacher`: the state of the model it distills from (train.distill), else None.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxlm.compute import losses, sharding
from jaxlm.compute.grpo import Grpo
from jaxlm.compute.losses import completion_logps
from jaxlm.compute.preference import Preference

if TYPE_CHECKING:  # a type hint only: the state is the trainer's, the step is below it
    from jaxlm.train.state import TrainState

Objective = Preference | Grpo  # a task's loss constants beyond the token losses
PRECOMPUTED = "reference_logps"  # a batch's reference log-probs [pairs, 2] when computed before training


@dataclasses.dataclass(frozen=True)
class Distill:
    """train.distill: the teacher's graph (its state is the step's `teacher` argument) and the loss's constants."""

    graphdef: nnx.GraphDef
    alpha: float
    temperature: float


def cast_floats(tree, dtype):
    if dtype == jnp.float32:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _has_rng_streams(rest) -> bool:
    return any(isinstance(v, nnx.RngKey) for _, v in nnx.to_flat_state(rest))


def starting_model(graphdef, params, reference, frozen, rest, compute_dtype):
    """The model as training started: `reference` (see the module docstring) in place of the trained `params`."""
    if reference is None:  # LoRA alone: the adapters off, exactly the base model
        reference = jax.tree.map(jnp.zeros_like, params)
    return nnx.merge(graphdef, cast_floats(reference, compute_dtype), cast_floats(frozen, compute_dtype), rest)


def reference_logps(graphdef, objective: Objective | None, params, reference, frozen, rest, batch, compute_dtype,
                    chunk_tokens: int = 0):
    """The starting model's completion log-probs of a preference batch where the objective needs them (dpo),
    else None; no gradient flows through them. A batch that carries them (dpo.precompute_reference) is read."""
    if objective is None or not objective.needs_reference:
        return None
    if PRECOMPUTED in batch:
        return jax.lax.stop_gradient(batch[PRECOMPUTED])
    model = starting_model(graphdef, params, reference, frozen, rest, compute_dtype)
    return jax.lax.stop_gradient(completion_logps(model, batch, chunk_tokens)[0])


def _grad_fn(graphdef, wrt, task, compute_dtype, reseed, chunk_tokens, packed, num_sources, objective, kl_to_base,
             distill: Distill | None):
    """(loss_sum, count, grads, by_source, sums) for one micro-batch; grads have the params' (float32) dtype.

    `nnx.value_and_grad` with `DiffState(0, wrt)` differentiates only the trainable variables
    (LoRA adapters, or every Param) and handles the dropout RNG counters' trace levels.
    `by_source` is (loss sums, token counts) per source with `num_sources > 0`, else ();
    `sums` the metric sums of a preference objective, of `kl_to_base` or of `distill` ({} without them).
    """

    def grads_of(params, frozen, rest, batch, key, reference, teacher):
        before = reference_logps(graphdef, objective, params, reference, frozen, rest, batch, compute_dtype,
                                 chunk_tokens)
        # split here, merged inside the differentiated function: a module of the outer trace could not record
        # its forward pass there (a mixture of experts' router loss)
        start = nnx.split(starting_model(graphdef, params, reference, frozen, rest, compute_dtype)) \
            if kl_to_base > 0 else None
        model = nnx.merge(graphdef, cast_floats(params, compute_dtype), cast_floats(frozen, compute_dtype), rest)
        if reseed:  # dropout keys derive from (seed, step, micro-batch) only: exact on resume
            nnx.reseed(model, dropout=key)

        def loss(model):
            kl = None if start is None else (nnx.merge(*start), kl_to_base)
            taught = None if distill is None else \
                (nnx.merge(distill.graphdef, teacher), distill.alpha, distill.temperature)
            terms = losses.loss_terms(task, model, batch, chunk_tokens=chunk_tokens, packed=packed,
                                     num_sources=num_sources, objective=objective, reference_logps=before, kl=kl,
                                     distill=taught)
            return terms.loss_sum, (terms.count, terms.by_source, terms.sums or {})

        (loss_sum, (count, by_source, sums)), grads = nnx.value_and_grad(
            loss, argnums=nnx.DiffState(0, wrt), has_aux=True)(model)
        return loss_sum, count, jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params), by_source, sums

    return grads_of


def make_train_step(graphdef, wrt, rest, tx, schedule, *, task, compute_dtype, grad_accum, shardings,
                    chunk_tokens=0, packed=True, num_sources: int = 0, objective: Objective | None = None,
                    kl_to_base: float = 0.0, distill: Distill | None = None,
                    compiler_options: dict[str, str] | None = None, steps_per_call: int = 1):
    """`step(state, frozen, rest, batch, reference, teacher) -> (state, metrics)`, jitted with the state donated
    (and with XLA's `compiler_options`, e.g. jaxlm.cpu_flags.train_step_options).

    `wrt` is the filter of trainable variables; `shardings` = (state, frozen, rest, batch, reference, teacher)
    NamedShardings. With `grad_accum > 1` every batch array is [grad_accum, micro_batch, ...]. With
    `steps_per_call > 1` the batch is that many steps' batches ([steps_per_call, ...] each), run as that many
    optimizer steps in one `lax.scan`, and each metric has a leading [steps_per_call] axis.
    A preference task's `objective` adds its metrics (TRL's names, means over the step's pairs);
    `kl_to_base > 0` adds β x KL(model || the starting model) per training token and logs `kl_to_base`;
    `distill` mixes in KL(teacher || model) at its temperature (the `teacher` argument's state) and logs `distill_kl`.
    `chunk_tokens` bounds the tokens whose logits the loss holds at once (0: the whole batch);
    `packed=False` promises one document per row (see `losses.loss_terms`).
    With `num_sources > 0` the batch carries `source_id` and the metrics add the loss split by
    source, `source_loss_sum` and `source_tokens` ([num_sources] each), for bandit mixing. A mixture of
    experts adds `expert_load` [sparse layers, experts]: each expert's share of its layer's routing choices,
    the token-weighted mean over the step's micro-batches.
    """
    grad_fn = _grad_fn(graphdef, wrt, task, compute_dtype, _has_rng_streams(rest), chunk_tokens, packed,
                       num_sources, objective, kl_to_base, distill)

    def step(state: TrainState, frozen, rest, batch, reference, teacher):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if grad_accum == 1:
            loss_sum, count, grads, by_source, sums = grad_fn(state.params, frozen, rest, batch, key, reference,
                                                              teacher)
        else:
            # The inputs ride in the carry, not the closure: nnx refuses variables from an outer trace.
            def micro(carry, xs):
                (params, frozen_, rest_, reference_, teacher_), acc = carry
                mb, i = xs
                out = grad_fn(params, frozen_, rest_, mb, jax.random.fold_in(key, i), reference_, teacher_)
                return ((params, frozen_, rest_, reference_, teacher_), jax.tree.map(jnp.add, acc, out)), None

            # The sums start at zeros of one micro-batch's shapes (a mixture's expert load is a matrix).
            first = jax.tree.map(lambda x: x[0], batch)
            shapes = jax.eval_shape(grad_fn, state.params, frozen, rest, first, key, reference, teacher)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            carry = ((state.params, frozen, rest, reference, teacher), zeros)
            (_, (loss_sum, count, grads, by_source, sums)), _ = jax.lax.scan(
                micro, carry, (batch, jnp.arange(grad_accum)))
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        loss = loss_sum / count
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def keep(new, old):  # a non-finite step leaves the state as it was
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        new_state = state.replace(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            bad_step=jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step),
        )
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), "tokens": count}
        if num_sources:
            metrics["source_loss_sum"], metrics["source_tokens"] = by_source
        metrics.update({k: v / count for k, v in sums.items()})  # per pair (preference tasks) or per token
        return new_state, metrics

    def steps(state: TrainState, frozen, rest, batches, reference, teacher):
        # The inputs ride in the carry, not the closure, as in `micro` above.
        def one(carry, batch):
            state, inputs = carry
            state, metrics = step(state, *inputs[:2], batch, *inputs[2:])
            return (state, inputs), metrics

        (state, _), metrics = jax.lax.scan(one, (state, (frozen, rest, reference, teacher)), batches)
        return state, metrics

    state_sh, frozen_sh, rest_sh, batch_sh, reference_sh, teacher_sh = shardings
    replicated = jax.sharding.NamedSharding(batch_sh.mesh, jax.sharding.PartitionSpec())
    return jax.jit(
        sharding.traced_under(batch_sh.mesh, step if steps_per_call == 1 else steps),
        in_shardings=(state_sh, frozen_sh, rest_sh, batch_sh, reference_sh, teacher_sh),
        out_shardings=(state_sh, replicated),
        donate_argnums=0,
        compiler_options=compiler_options,
    )


def make_completion_logps(graphdef, *, compute_dtype, shardings, chunk_tokens=0):
    """`logps(params, frozen, rest, batch) -> [pairs, 2]`: the summed completion log-probs of a preference batch
    under the model as `params` hold it, dropout off (`graphdef` in eval mode), jitted; what
    dpo.precompute_reference keeps of the starting model."""

    def logps(params, frozen, rest, batch):
        model = nnx.merge(graphdef, cast_floats(params, compute_dtype), cast_floats(frozen, compute_dtype), rest)
        return completion_logps(model, batch, chunk_tokens)[0]

    return jax.jit(sharding.traced_under(shardings[3].mesh, logps), in_shardings=shardings)


def make_eval_step(graphdef, *, task, compute_dtype, shardings, chunk_tokens=0, packed=True,
                   objective: Objective | None = None):
    """`eval_step(params, frozen, rest, batch, reference) -> (loss_sum, count, correct, predictions, sums)`;
    no dropout. `correct`: how many counted tokens (rows) the argmax gets right (token or class accuracy,
    summed on device so every process gets the global number; None for preference tasks); `predictions`:
    the argmax tags or classes for entity and class metrics, None for the language-model tasks; `sums`:
    a preference objective's metric sums over the batch's pairs ({} for other tasks)."""

    def eval_step(params, frozen, rest, batch, reference):
        before = reference_logps(graphdef, objective, params, reference, frozen, rest, batch, compute_dtype,
                                 chunk_tokens)
        model = nnx.merge(graphdef, cast_floats(params, compute_dtype), cast_floats(frozen, compute_dtype), rest)
        terms = losses.loss_terms(task, model, batch, chunk_tokens=chunk_tokens, packed=packed, count_correct=True,
                                  objective=objective, reference_logps=before)
        predictions = None if terms.class_logits is None else jnp.argmax(terms.class_logits, -1)
        return terms.loss_sum, terms.count, terms.correct, predictions, terms.sums or {}

    return jax.jit(sharding.traced_under(shardings[3].mesh, eval_step), in_shardings=shardings)
