"""`generate`: prompts in (strings, chat messages or token ids), texts and token ids out."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.models import position_limit
from jaxlm.models.contract import is_causal_lm
from jaxlm.models.prompt_tuning import virtual_token_ids
from jaxlm.sampling import loop
from jaxlm.sampling.logits import SamplingParams
from jaxlm.text.messages import check_messages

Message = dict  # {"role": ..., "content": ...}
Prompt = str | Sequence[Message] | Sequence[int]


@dataclasses.dataclass
class GenerationResult:
    """One entry per prompt, in the order given. `token_ids` end with the stop token when one was hit;
    `texts` leave it out (and skip special tokens). Seconds are wall time summed over micro-batches;
    `compile_seconds` is zero when every program was already compiled."""

    texts: list[str] | None  # None when no tokenizer was given
    token_ids: list[list[int]]
    finish_reasons: list[str]  # "stop" (a stop token) or "length" (max_new_tokens reached)
    logprobs: list[list[float]] | None  # model log-prob of each token in token_ids, if requested
    prompt_lengths: list[int]
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    compile_seconds: float = 0.0

    @property
    def new_tokens(self) -> int:
        return sum(len(ids) for ids in self.token_ids)


def generate(
    model,
    tokenizer,
    prompts: Prompt | Sequence[Prompt],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    *,
    repetition_penalty: float | None = None,
    stop_token_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
    stop_at_eos: bool = True,
    chat: bool = False,
    return_logprobs: bool = False,
    batch_size: int = 32,
    on_tokens: Callable[[list[list[int]]], None] | None = None,
    stream_every: int = 8,
) -> GenerationResult:
    """Generate up to `max_new_tokens` for each prompt with a causal LM (`models.contract.CausalLM`).

    prompts: a string, a chat (list of {"role", "content"} dicts), a list of token ids,
        or a list of any of these. Chats go through the tokenizer's chat template with the
        generation prompt added; `chat=True` wraps plain strings as one user message.
    temperature=0.0 is greedy decoding; otherwise top_k / top_p / repetition_penalty apply
        as in transformers, sampled with `jax.random.key(seed)`.
    stop_token_ids: extra stop tokens for every row, or one list per prompt. Rows also stop
        at the model's/tokenizer's EOS unless `stop_at_eos=False`.
    on_tokens: called with each prompt's newest tokens every `stream_every` steps (streaming;
        all prompts must fit in one batch). The samples are the same as without it.
    Prompts are sorted by length into micro-batches of `batch_size` to limit padding.
    A prompt-tuned model's virtual tokens go before every prompt (the first cache slots of its row,
    positions 0..n-1, as PEFT places them); `prompt_lengths` do not count them.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not is_causal_lm(model):
        raise TypeError(f"{type(model).__name__} cannot generate: it has no KV-cache decode (not a causal LM)")
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
    virtual = virtual_token_ids(model)
    prompt_ids = [virtual + ids for ids in encode_prompts(tokenizer, prompts, chat=chat)]
    if on_tokens is not None and len(prompt_ids) > batch_size:
        raise ValueError(f"streaming (on_tokens) needs all {len(prompt_ids)} prompts in one batch: "
                         f"raise batch_size from {batch_size}")
    stops = _stop_ids(model, tokenizer, stop_token_ids, len(prompt_ids), stop_at_eos)
    _check_length(model, prompt_ids, max_new_tokens)
    pad_id = choose_pad_id(model, tokenizer, stops)

    graphdef, state = nnx.split(model)
    token_ids, logprobs, reasons = [None] * len(prompt_ids), [None] * len(prompt_ids), [None] * len(prompt_ids)
    seconds = {"prefill": 0.0, "decode": 0.0, "compile": 0.0}
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    for batch_number, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start : start + batch_size]
        stream = None
        if on_tokens is not None:  # the caller sees rows in its own order, not sorted by length
            stream = lambda chunk, rows=rows: on_tokens([chunk[rows.index(i)] for i in range(len(rows))])  # noqa: E731
        tokens, row_logprobs, batch_seconds = _generate_batch(
            graphdef, state, model.config, params, [prompt_ids[i] for i in rows], [stops[i] for i in rows],
            max_new_tokens, jax.random.fold_in(jax.random.key(seed), batch_number), pad_id, stream, stream_every,
        )
        for name in seconds:
            seconds[name] += batch_seconds[name]
        for row, i in enumerate(rows):
            token_ids[i], reasons[i] = _trim(tokens[row], stops[i])
            logprobs[i] = row_logprobs[row, : len(token_ids[i])].tolist()

    texts = None
    if tokenizer is not None:  # the stop token ends the text but is not part of it
        texts = [tokenizer.decode(ids[:-1] if reason == "stop" else ids, skip_special_tokens=True)
                 for ids, reason in zip(token_ids, reasons, strict=False)]
    return GenerationResult(
        texts=texts,
        token_ids=token_ids,
        finish_reasons=reasons,
        logprobs=logprobs if return_logprobs else None,
        prompt_lengths=[len(p) - len(virtual) for p in prompt_ids],
        prefill_seconds=seconds["prefill"],
        decode_seconds=seconds["decode"],
        compile_seconds=seconds["compile"],
    )


def _generate_batch(graphdef, state, config, params, prompts, stops, max_new_tokens, key, pad_id, on_tokens,
                    stream_every):
    """Pad one micro-batch to bucketed shapes, prefill, decode; returns host arrays and timings."""
    batch = len(prompts)
    padded_batch = loop.bucket(batch, minimum=1)  # padding rows start out done
    prompt_len = loop.prompt_bucket(max(len(p) for p in prompts))
    ids = np.full((padded_batch, prompt_len), pad_id, np.int32)
    mask = np.zeros((padded_batch, prompt_len), np.int32)
    for row, prompt in enumerate(prompts):  # left padding: every row's last prompt token is at the end
        ids[row, prompt_len - len(prompt) :] = prompt
        mask[row, prompt_len - len(prompt) :] = 1
    stop_ids = np.full((padded_batch, max(1, max(len(s) for s in stops))), -1, np.int32)
    for row, row_stops in enumerate(stops):
        stop_ids[row, : len(row_stops)] = sorted(row_stops)
    stop_ids = jnp.asarray(stop_ids)

    plan = loop.Plan(
        sampling=params.program(config.vocab_size),
        max_new=loop.bucket(max_new_tokens),
        pad_id=pad_id,
        cache_dtype=param_dtype(state),
    )
    knobs = params.knobs()
    start = time.perf_counter()
    decode_state, compile_prefill = loop.prefill(
        graphdef, plan, state, jnp.asarray(ids), jnp.asarray(mask), stop_ids, key, knobs
    )
    jax.block_until_ready(decode_state)
    prefill_seconds = time.perf_counter() - start - compile_prefill

    # Without streaming one decode call runs the whole loop; with it, each call adds `stream_every` tokens.
    start, compile_decode, emitted, limit = time.perf_counter(), 0.0, [0] * batch, 1
    chunk = max_new_tokens if on_tokens is None else max(1, stream_every)
    while True:
        if on_tokens is not None:
            emitted = _emit(on_tokens, decode_state, emitted, stops)
        if limit >= max_new_tokens or bool(jnp.all(decode_state.done)):
            break
        limit = min(limit + chunk, max_new_tokens)
        decode_state, compile_seconds = loop.decode(graphdef, plan, state, decode_state, limit, stop_ids, knobs)
        compile_decode += compile_seconds
    tokens, logprobs, steps = jax.device_get((decode_state.tokens, decode_state.logprobs, decode_state.step))
    decode_seconds = time.perf_counter() - start - compile_decode
    seconds = {"prefill": prefill_seconds, "decode": decode_seconds, "compile": compile_prefill + compile_decode}
    return tokens[:batch, :steps], logprobs[:batch, :steps], seconds


def _emit(on_tokens, decode_state, emitted: list[int], stops: list[set[int]]) -> list[int]:
    """Send each row the tokens it generated since the last call (none after its stop token)."""
    tokens, steps = jax.device_get((decode_state.tokens, decode_state.step))
    rows = [_trim(tokens[row, :steps], row_stops)[0] for row, row_stops in enumerate(stops)]
    on_tokens([ids[done:] for ids, done in zip(rows, emitted, strict=False)])
    return [len(ids) for ids in rows]


def _trim(tokens: np.ndarray, stops: set[int]) -> tuple[list[int], str]:
    """Cut a row after its first stop token (padding follows it)."""
    ids = tokens.tolist()
    for i, token in enumerate(ids):
        if token in stops:
            return ids[: i + 1], "stop"
    return ids, "length"


# --- prompts and stop tokens --------------------------------------------------------------


def encode_prompts(tokenizer, prompts, *, chat: bool = False) -> list[list[int]]:
    """Token ids for each prompt. Chats use the tokenizer's chat template with the generation prompt."""
    if isinstance(prompts, str) or _is_chat(prompts) or _is_ids(prompts):
        prompts = [prompts]
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    encoded, template = [], None
    for i, prompt in enumerate(prompts):
        if _is_ids(prompt):
            ids = [int(t) for t in prompt]
        else:
            if tokenizer is None:
                raise ValueError(f"prompt {i} is text, but no tokenizer was given (pass token ids instead)")
            if isinstance(prompt, str) and chat:
                prompt = [{"role": "user", "content": prompt}]
            if isinstance(prompt, str):
                ids = tokenizer(prompt)["input_ids"]
            elif _is_chat(prompt):
                if template is None:
                    template = _chat_template(tokenizer, i)
                try:
                    check_messages(list(prompt))
                except ValueError as e:
                    raise ValueError(f"prompt {i}: {e}") from None
                text = template.render(list(prompt), add_generation_prompt=True)
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            else:
                raise TypeError(f"prompt {i}: expected a string, a list of chat messages or token ids, "
                                f"got {type(prompt).__name__}")
        if not ids:
            raise ValueError(f"prompt {i} is empty after tokenization")
        encoded.append(ids)
    return encoded


def _chat_template(tokenizer, index: int):
    """The tokenizer's chat template, compiled once and rendered with a budget (ChatTemplateError: exit 2)."""
    from jaxlm.text.chat_template import ChatTemplate

    template = ChatTemplate.from_tokenizer(tokenizer) if getattr(tokenizer, "chat_template", None) else None
    if template is None:
        raise ValueError(f"prompt {index} is a chat, but the tokenizer has no chat_template")
    return template


def _is_chat(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(m, dict) for m in x)


def _is_ids(x) -> bool:
    return isinstance(x, (list, tuple, np.ndarray)) and len(x) > 0 and all(
        isinstance(t, (int, np.integer)) for t in x
    )


def eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for eos in (getattr(model.config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(eos, int):
            ids.add(eos)
        elif eos is not None:
            ids.update(eos)
    return ids


def _stop_ids(model, tokenizer, stop_token_ids, num_prompts: int, stop_at_eos: bool) -> list[set[int]]:
    """Stop-token set per prompt: EOS (unless disabled) plus shared or per-prompt extra ids."""
    eos = eos_ids(model, tokenizer) if stop_at_eos else set()
    if not stop_token_ids:
        return [set(eos) for _ in range(num_prompts)]
    if all(isinstance(t, (int, np.integer)) for t in stop_token_ids):
        return [eos | {int(t) for t in stop_token_ids} for _ in range(num_prompts)]
    if len(stop_token_ids) != num_prompts:
        raise ValueError(f"stop_token_ids has {len(stop_token_ids)} per-prompt lists for {num_prompts} prompts")
    return [eos | {int(t) for t in row} for row in stop_token_ids]


def choose_pad_id(model, tokenizer, stops) -> int:
    for candidate in (getattr(model.config, "pad_token_id", None), getattr(tokenizer, "pad_token_id", None)):
        if isinstance(candidate, int):
            return candidate
    return min(set().union(*stops), default=0)  # any id works: padding is masked out and trimmed


def _check_length(model, prompt_ids, max_new_tokens: int) -> None:
    """Learned position tables (GPT-2) end at their size; going past them would read garbage."""
    limit = position_limit(model.config)
    longest = max(len(p) for p in prompt_ids)
    if limit.learned and longest + max_new_tokens > limit.size:
        raise ValueError(
            f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
            f"{limit.size} positions ({limit.key})"
        )


def param_dtype(state) -> str:
    """The cache holds keys/values in the dtype of the model's floating-point parameters."""
    for leaf in jax.tree.leaves(state):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.dtype(leaf.dtype).name
    return "float32"
