"""The device side of continuous batching: a fixed number of rows ("slots") decoding together.

Every row of the batch KV cache belongs to one request (or none). All rows write the same cache
slot `index` at each step, so a request that joins has its prompt prefilled alone (batch 1, the
prompt padded to a `loop.prompt_bucket` length) and written into its row so that it ends just
before `index`; its positions and sampling settings are per row. When `index` reaches the end,
the cache shifts left past the slots no running request needs (`KVCache.shifted`).

Three compiled programs, each built once per shape: `admit` (prefill + first token + insert, one
per prompt bucket), `decode` (`steps` tokens for the leading rows, one per row bucket: requests
take the lowest free row, so a request alone decodes as a batch of one) and `shift`. The batch
state is donated to each, so XLA updates the cache in place.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxlm.models.kv_cache import KVCache
from jaxlm.models.layers import left_padded_positions
from jaxlm.sampling.api import param_dtype
from jaxlm.sampling.logits import first_argmax, top_p_filter


@struct.dataclass
class Rows:
    cache: KVCache  # [max_batch rows, slots]; `cache.index` is the slot every row writes next
    last: jax.Array  # [B] int32: each row's newest token, not yet in the cache
    position: jax.Array  # [B] int32: the position of `last`
    temperature: jax.Array  # [B] float32; 0 is greedy
    top_p: jax.Array  # [B] float32
    key: jax.Array  # [B] PRNG keys; a row's token t samples with fold_in(key, t), whatever else runs
    step: jax.Array  # [B] int32: tokens the row has generated


def choose(logits, temperature, top_p, key, step):
    """One token per row [B, vocab] with that row's own settings (each argument [B]); returns
    (tokens [B], the model's log-probs of them [B])."""
    logits = logits.astype(jnp.float32)
    greedy = first_argmax(logits)
    sampling = temperature > 0

    def sample(_):
        scores = logits / jnp.where(sampling, temperature, 1.0)[:, None]
        scores = top_p_filter(scores, top_p[:, None])
        keys = jax.vmap(jax.random.fold_in)(key, step)
        return jax.vmap(jax.random.categorical)(keys, scores).astype(jnp.int32)

    # The sort behind top-p costs as much as a small model's step: skip it when every row is greedy.
    sampled = jax.lax.cond(jnp.any(sampling), sample, lambda _: greedy, None)
    tokens = jnp.where(sampling, sampled, greedy)
    chosen = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    return tokens, chosen - jax.nn.logsumexp(logits, axis=-1)


def _admit(graphdef, cache_dtype, state, rows: Rows, ids, mask, row, index, temperature, top_p, key):
    """Prefill one prompt ids/mask [1, P] (left-padded), pick its first token, and give it row `row` with
    its last prompt slot at index - 1. Returns (rows, first token, its log-prob)."""
    model = nnx.merge(graphdef, state)
    prompt_len = ids.shape[1]
    cache = model.init_cache(1, prompt_len, cache_dtype)
    positions = left_padded_positions(mask)
    valid = mask.astype(bool)
    # One call over the whole prompt (sampling.loop splits off the last token so that XLA drops the unused
    # [P, vocab] logits): a prefill program per prompt bucket compiles in half the time, and the logits
    # cost less than a fifth of SmolLM2's prefill, once per request.
    logits, cache = model(ids, valid, positions=positions, cache=cache)
    token, logprob = choose(logits[:, -1], temperature[None], top_p[None], key[None], jnp.zeros((1,), jnp.int32))
    rows = rows.replace(
        cache=dataclasses.replace(rows.cache, index=index).put_row(row, cache, index - prompt_len),
        last=rows.last.at[row].set(token[0]),
        position=rows.position.at[row].set(positions[0, -1] + 1),
        temperature=rows.temperature.at[row].set(temperature),
        top_p=rows.top_p.at[row].set(top_p),
        key=rows.key.at[row].set(key),
        step=rows.step.at[row].set(1),
    )
    return rows, token[0], logprob[0]


def _decode(graphdef, state, rows: Rows, steps: int, active: int):
    """`steps` tokens for each of the first `active` rows ([active, steps] tokens and log-probs). Rows among
    them without a request decode too (their tokens are ignored); the rows after them are left alone, so one
    request alone costs a batch of one, not of --max-batch."""
    model = nnx.merge(graphdef, state)

    def step(i, carry):
        rows, tokens, logprobs = carry
        logits, cache = model(rows.last[:, None], positions=rows.position[:, None], cache=rows.cache)
        token, logprob = choose(logits[:, 0], rows.temperature, rows.top_p, rows.key, rows.step)
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, i))
        logprobs = jax.lax.dynamic_update_slice(logprobs, logprob[:, None], (0, i))
        rows = rows.replace(cache=cache, last=token, position=rows.position + 1, step=rows.step + 1)
        return rows, tokens, logprobs

    empty = (jnp.zeros((active, steps), jnp.int32), jnp.zeros((active, steps), jnp.float32))
    if active == rows.last.shape[0]:
        return jax.lax.fori_loop(0, steps, step, (rows, *empty))
    leading, tokens, logprobs = jax.lax.fori_loop(0, steps, step, (_leading(rows, active), *empty))
    return _with_leading(rows, leading), tokens, logprobs


def _leading(rows: Rows, count: int) -> Rows:
    """The first `count` rows (a copy)."""
    return jax.tree.map(lambda a: a[:count], rows.replace(cache=None)).replace(cache=rows.cache.head(count))


def _with_leading(rows: Rows, leading: Rows) -> Rows:
    """`rows` with its first rows replaced by `leading`, and the cache index `leading` advanced to."""
    count = leading.last.shape[0]
    cache = dataclasses.replace(rows.cache.put_row(0, leading.cache, 0), index=leading.cache.index)
    rest = jax.tree.map(lambda whole, part: whole.at[:count].set(part), rows.replace(cache=None),
                        leading.replace(cache=None))
    return rest.replace(cache=cache)


def _shift(rows: Rows, amount):
    return rows.replace(cache=rows.cache.shifted(amount))


class Engine:
    """The batch state and its three programs for one model; used from one thread only."""

    def __init__(self, model, *, max_batch: int, slots: int, steps: int, pad_id: int):
        model.eval()
        self.graphdef, self.state = nnx.split(model)
        self.max_batch, self.slots, self.steps = max_batch, slots, steps
        dtype = jnp.dtype(param_dtype(self.state))
        self.rows = Rows(
            cache=model.init_cache(max_batch, slots, dtype),
            last=jnp.full((max_batch,), pad_id, jnp.int32),
            position=jnp.zeros((max_batch,), jnp.int32),
            temperature=jnp.zeros((max_batch,), jnp.float32),
            top_p=jnp.ones((max_batch,), jnp.float32),
            key=jax.random.split(jax.random.key(0), max_batch),
            step=jnp.zeros((max_batch,), jnp.int32),
        )
        self._admit = jax.jit(functools.partial(_admit, self.graphdef, dtype), donate_argnums=(1,))
        self._decode = jax.jit(functools.partial(_decode, self.graphdef), static_argnums=(2, 3),
                               donate_argnums=(1,))
        self._shift = jax.jit(_shift, donate_argnums=(0,))

    def admit(self, row: int, ids, mask, index: int, temperature: float, top_p: float, seed_key) -> tuple[int, float]:
        """ids/mask: numpy [1, P]. `index` >= P is the slot the batch writes next. Returns the first token."""
        i32, f32 = functools.partial(jnp.asarray, dtype=jnp.int32), functools.partial(jnp.asarray, dtype=jnp.float32)
        self.rows, token, logprob = self._admit(self.state, self.rows, i32(ids), i32(mask), i32(row), i32(index),
                                                f32(temperature), f32(top_p), seed_key)
        token, logprob = jax.device_get((token, logprob))
        return int(token), float(logprob)

    def decode(self, active: int):
        """(tokens, log-probs) as numpy [active, steps] of the first `active` rows (one program per value)."""
        self.rows, tokens, logprobs = self._decode(self.state, self.rows, self.steps, active)
        return jax.device_get((tokens, logprobs))

    def row_buckets(self) -> list[int]:
        """The numbers of leading rows decode is compiled for: 1, 4, 16, ... up to max_batch (powers of four
        rather than two: half the programs to compile, for at most 4x the rows of work)."""
        return sorted({min(4**i, self.max_batch) for i in range(self.max_batch.bit_length())} | {self.max_batch})

    def shift(self, amount: int) -> None:
        self.rows = self._shift(self.rows, jnp.asarray(amount, jnp.int32))
