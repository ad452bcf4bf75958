"""The compiled part of generation: prefill a KV cache, then decode inside `jax.lax.while_loop`.

Two jitted programs per shape: `prefill` runs the padded prompts through the model once
and picks the first new token; `decode` runs the token loop on device until every row
has stopped or `limit` tokens exist. The decode state (KV cache included) is donated, so
XLA updates it in place. Calling `decode` again with a larger `limit` continues where it
stopped, which is how the CLI streams without any per-token Python in the loop.

Programs are compiled ahead of time and kept in a small cache keyed by the model's
graph, the sampling program and each argument's shape, dtype and placement (a program
compiled for parameters on one device cannot take parameters sharded over a mesh, as
they are after training on several devices); `compile_seconds` reports the cost and
`CompileStats` the hits, so tests and benchmarks can see reuse.
"""

from __future__ import annotations

import collections
import dataclasses
import time

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxlm.models.kv_cache import KVCache
from jaxlm.models.layers import left_padded_positions
from jaxlm.sampling.logits import SamplingProgram, choose_tokens


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything static about one generation call: compiled into the programs."""

    sampling: SamplingProgram
    max_new: int  # capacity of the output buffer (a bucket >= max_new_tokens)
    pad_id: int
    cache_dtype: str


@struct.dataclass
class DecodeState:
    cache: KVCache
    tokens: jax.Array  # [batch, max_new] int32: generated tokens, pad_id after a row stops
    logprobs: jax.Array  # [batch, max_new] float32: model log-prob of each generated token
    last: jax.Array  # [batch] int32: newest token, not yet in the cache
    position: jax.Array  # [batch] int32: position of `last`
    seen: jax.Array | None  # [batch, vocab] bool, tokens so far (only for the repetition penalty)
    done: jax.Array  # [batch] bool: the row emitted a stop token (or is batch padding)
    step: jax.Array  # int32 scalar: tokens generated so far (the same for all rows)
    key: jax.Array  # PRNG key; step t samples with fold_in(key, t), so chunking does not change samples


def _prefill(graphdef, plan: Plan, state, prompt_ids, prompt_mask, stop_ids, key, knobs) -> DecodeState:
    model = nnx.merge(graphdef, state)
    model.eval()  # the merged copy only: the caller's model keeps its mode
    batch, prompt_len = prompt_ids.shape
    cache = model.init_cache(batch, prompt_len + plan.max_new, jnp.dtype(plan.cache_dtype))
    positions = left_padded_positions(prompt_mask)
    valid = prompt_mask.astype(bool)
    # Only the last position's logits are needed. Running the prompt minus its last token
    # first leaves those logits unused, so XLA drops the [batch, prompt, vocab] projection.
    _, cache = model(prompt_ids[:, :-1], valid[:, :-1], positions=positions[:, :-1], cache=cache)
    logits, cache = model(prompt_ids[:, -1:], valid[:, -1:], positions=positions[:, -1:], cache=cache)
    seen = None
    if plan.sampling.penalty:
        seen = jnp.zeros((batch, logits.shape[-1]), bool)
        seen = seen.at[jnp.arange(batch)[:, None], prompt_ids].max(prompt_mask.astype(bool))
    token, logprob = choose_tokens(logits[:, -1], seen, jax.random.fold_in(key, 0), plan.sampling, knobs)
    row_is_real = prompt_mask.any(axis=-1)
    token = jnp.where(row_is_real, token, plan.pad_id)
    return DecodeState(
        cache=cache,
        tokens=jnp.full((batch, plan.max_new), plan.pad_id, jnp.int32).at[:, 0].set(token),
        logprobs=jnp.zeros((batch, plan.max_new), jnp.float32).at[:, 0].set(logprob),
        last=token,
        position=positions[:, -1] + 1,
        seen=None if seen is None else _mark(seen, token),
        done=_is_stop(token, stop_ids) | ~row_is_real,
        step=jnp.ones((), jnp.int32),
        key=key,
    )


def _decode(graphdef, plan: Plan, state, decode_state: DecodeState, limit, stop_ids, knobs) -> DecodeState:
    model = nnx.merge(graphdef, state)
    model.eval()

    def running(s: DecodeState):
        return (s.step < limit) & ~jnp.all(s.done)

    def step(s: DecodeState) -> DecodeState:
        logits, cache = model(s.last[:, None], positions=s.position[:, None], cache=s.cache)
        token, logprob = choose_tokens(logits[:, 0], s.seen, jax.random.fold_in(s.key, s.step), plan.sampling, knobs)
        token = jnp.where(s.done, plan.pad_id, token)
        return s.replace(
            cache=cache,
            tokens=jax.lax.dynamic_update_slice(s.tokens, token[:, None], (0, s.step)),
            logprobs=jax.lax.dynamic_update_slice(s.logprobs, logprob[:, None], (0, s.step)),
            last=token,
            position=s.position + 1,
            seen=None if s.seen is None else _mark(s.seen, token),
            done=s.done | _is_stop(token, stop_ids),
            step=s.step + 1,
        )

    return jax.lax.while_loop(running, step, decode_state)


def _is_stop(token, stop_ids):
    """stop_ids [batch, n] (padded with -1): per-row stop tokens."""
    return jnp.any(token[:, None] == stop_ids, axis=-1)


def _mark(seen, token):
    return seen.at[jnp.arange(seen.shape[0]), token].set(True)


_prefill_jit = jax.jit(_prefill, static_argnums=(0, 1))
_decode_jit = jax.jit(_decode, static_argnums=(0, 1), donate_argnums=(3,))


@dataclasses.dataclass
class CompileStats:
    compiles: int = 0
    hits: int = 0
    seconds: float = 0.0


STATS = CompileStats()
_MAX_EXECUTABLES = 32
_executables: collections.OrderedDict = collections.OrderedDict()


def _executable(jitted, graphdef, plan: Plan, *args):
    """An ahead-of-time compiled program for these static values and argument shapes (LRU cached)."""
    leaves, treedef = jax.tree.flatten(args)
    key = (jitted, graphdef, plan, treedef, tuple(_placed_shape(x) for x in leaves))
    if key in _executables:
        STATS.hits += 1
        _executables.move_to_end(key)
        return _executables[key], 0.0
    start = time.perf_counter()
    compiled = jitted.lower(graphdef, plan, *args).compile()
    seconds = time.perf_counter() - start
    STATS.compiles += 1
    STATS.seconds += seconds
    _executables[key] = compiled
    if len(_executables) > _MAX_EXECUTABLES:
        _executables.popitem(last=False)
    return compiled, seconds


def _placed_shape(x) -> tuple:
    """What of an argument the compiled program depends on. Only committed arrays pin a sharding:
    an uncommitted one (fresh from `jnp.asarray`) is moved to wherever the program wants it."""
    sharding = x.sharding if isinstance(x, jax.Array) and x.committed else None
    return x.shape, x.dtype, sharding


def prefill(graphdef, plan, state, prompt_ids, prompt_mask, stop_ids, key, knobs) -> tuple[DecodeState, float]:
    """Returns (decode state after the first new token, seconds spent compiling)."""
    args = (state, prompt_ids, prompt_mask, stop_ids, key, knobs)
    compiled, seconds = _executable(_prefill_jit, graphdef, plan, *args)
    return compiled(*args), seconds


def decode(graphdef, plan, state, decode_state, limit, stop_ids, knobs) -> tuple[DecodeState, float]:
    """Continue until all rows stop or `limit` tokens exist. `decode_state` is donated: do not reuse it."""
    args = (state, decode_state, jnp.asarray(limit, jnp.int32), stop_ids, knobs)
    compiled, seconds = _executable(_decode_jit, graphdef, plan, *args)
    return compiled(*args), seconds


def bucket(n: int, minimum: int = 16) -> int:
    """Round up to a power of two (at least `minimum`), so nearby sizes share one compiled program."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def prompt_bucket(n: int) -> int:
    """Prompt lengths round up to 16, 24, 32, 48, 64, 96, ...: powers of two and 1.5x them. Prefill
    cost grows with the padded length, so this wastes at most a third for twice the programs."""
    power = bucket(n)
    three_quarters = power * 3 // 4
    return three_quarters if n <= three_quarters and three_quarters >= 16 else power
