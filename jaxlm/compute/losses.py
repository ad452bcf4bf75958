"""Per-task forward passes and losses. Each returns token-summed loss and the token count,
so gradient accumulation and data parallelism reduce exactly like one big batch.

* sft / causal_lm: batches from the data pipeline carry `targets` and `loss_mask` (SFT masks
  everything but assistant/completion tokens; causal LM everything but padding), plus
  `segment_ids`/`positions` so packed documents never attend to each other. A prompt-tuned model
  sees its virtual tokens first; their outputs are dropped, so targets and masks stay as they are.
  The loss takes the model's final hidden states and projects them to the vocabulary a chunk of
  positions at a time, so float32 logits for the whole batch x vocabulary never exist at once.
* token_classification: BERT tagger, `labels` of -100 are ignored (only first sub-tokens count).
* classification: BERT sequence classifier, one label per row (softmax cross-entropy over the
  classes, binary included); a row labelled -100 (padding of the last eval batch) does not count.
* dpo / orpo / simpo: pairs of completions, one loss per pair (compute/preference.py).
* grpo: sampled completions with their advantages and the log-probs kept from the rollout (compute/grpo.py).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlm.compute import grpo, preference
from jaxlm.models.llama_moe import expert_load, router_aux_loss
from jaxlm.models.prompt_tuning import prepend_virtual_tokens
from jaxlm.tasks import IGNORE_LABEL, LABELLED_TASKS, PAIR_KEYS, PREFERENCE_TASKS

BATCH_KEYS = {
    "sft": ("input_ids", "targets", "loss_mask", "segment_ids", "positions"),
    "causal_lm": ("input_ids", "targets", "loss_mask", "segment_ids", "positions"),
    "token_classification": ("input_ids", "attention_mask", "token_type_ids", "labels"),
    "classification": ("input_ids", "attention_mask", "token_type_ids", "labels"),
    **dict.fromkeys(PREFERENCE_TASKS, PAIR_KEYS),  # each [batch, 2, seq]: a chosen and a rejected row
    "grpo": grpo.BATCH_KEYS,  # [completions, seq], advantages [completions] (train/rollout.py makes them)
}
# the pipeline's (or the rollout's) dtype where it is not int32
BATCH_DTYPES = {"loss_mask": "float32", "reference_logps": "float32", **dict.fromkeys(grpo.FLOAT_KEYS, "float32")}


class LossTerms(NamedTuple):
    loss_sum: jax.Array  # sum of per-token (per-row for classification) losses, float32
    count: jax.Array  # how many tokens (rows) count
    class_logits: jax.Array | None  # classification tasks: the logits, for the eval step's predictions
    by_source: tuple = ()  # with num_sources: (loss sums, token counts), each [num_sources] (bandit mixing)
    correct: jax.Array | None = None  # with count_correct: how many counted tokens (rows) the argmax gets right
    sums: dict | None = None  # preference tasks: {metric name: sum over the counted pairs}


def loss_terms(task: str, model, batch, *, chunk_tokens: int = 0, packed: bool = True,
               num_sources: int = 0, count_correct: bool = False,
               objective: preference.Preference | grpo.Grpo | None = None, reference_logps=None,
               kl=None, distill=None) -> LossTerms:
    """The loss of one batch, as sums, so accumulation and data parallelism reduce like one big batch.

    `chunk_tokens` bounds how many tokens' logits a language-model loss holds at once (0: all).
    `packed=False` promises one document per row from position 0 (data.pack=false): attention then
    takes per-row lengths, which flash-attention kernels accept, instead of segment ids.
    `num_sources > 0` also splits the loss by the batch's `source_id`; that needs each token's loss,
    so the language-model loss is then computed unchunked. `count_correct` (evaluation: no gradients)
    also counts the argmax hits, for token or class accuracy. A preference task needs its `objective`,
    and dpo the reference model's `completion_logps` of the batch. `kl` = (reference model, β) adds
    β x KL(model || reference) per counted token to a language-model loss (train.kl_to_base), its sum in
    `sums["kl_to_base"]`; to a preference loss per pair, summed over the pair's completion tokens.
    `distill` = (teacher model, α, T) mixes a language-model loss as (1 - α) x cross-entropy
    + α x T² x KL(teacher || model) at temperature T per counted token (train.distill), the KL's sum in
    `sums["distill_kl"]`; the split by source stays the plain cross-entropy."""
    if task == "grpo":
        assert isinstance(objective, grpo.Grpo), "task grpo needs its objective"
        logps = token_logps(model, batch, objective.temperature, chunk_tokens)
        loss_sum, count, sums = grpo.policy_terms(objective, logps, batch["old_logps"], batch["ref_logps"],
                                                  batch["advantages"], batch["completion_mask"])
        balance = None if count_correct else router_aux_loss(model)
        return LossTerms(loss_sum if balance is None else loss_sum + balance * count, count, None, sums=sums)
    if task in PREFERENCE_TASKS:
        assert isinstance(objective, preference.Preference), f"task {task} needs its preference objective"
        assert objective.task == task, f"task {task} needs its preference objective"
        (logps, tokens), hidden, inputs = completion_logps(model, batch, chunk_tokens, with_hidden=True)
        loss_sum, count, sums = preference.pair_terms(objective, logps, tokens, reference_logps)
        balance = None if count_correct else router_aux_loss(model)  # training only, once per pair (as TRL)
        if balance is not None:
            loss_sum = loss_sum + balance * count
        if kl is not None:  # per pair, like the loss it joins: KL summed over its chosen and rejected completions
            reference, beta = kl
            reference_hidden = jax.lax.stop_gradient(reference(**inputs, return_hidden=True))
            sums = {**sums, "kl_to_base": kl_to_reference(hidden, model, reference_hidden, reference,
                                                          inputs_mask(batch), chunk_tokens)}
            loss_sum = loss_sum + beta * sums["kl_to_base"]
        return LossTerms(loss_sum, count, None, sums=sums)
    if task in LABELLED_TASKS:
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).astype(jnp.float32)
        labels = batch["labels"]
        weights = (labels != IGNORE_LABEL).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(labels == IGNORE_LABEL, 0, labels))
        by_source = source_terms(nll, weights, batch["source_id"], num_sources) if num_sources else ()
        correct = jnp.sum((jnp.argmax(logits, -1) == labels) * weights) if count_correct else None
        return LossTerms(jnp.sum(nll * weights), jnp.sum(weights), logits, by_source, correct)
    ids, positions, segments, virtual = prepend_virtual_tokens(
        model, batch["input_ids"], batch["positions"], batch["segment_ids"])
    documents = dict(segment_ids=segments) if packed else \
        dict(lengths=jnp.sum(segments != 0, axis=-1, dtype=jnp.int32))
    hidden = model(ids, positions=positions, return_hidden=True, **documents)[:, virtual:]
    weights = batch["loss_mask"].astype(jnp.float32)
    if count_correct:
        loss_sum, correct = nll_and_correct(hidden, model, batch["targets"], weights, chunk_tokens)
        return LossTerms(loss_sum, jnp.sum(weights), None, correct=correct)
    # Training adds a mixture of experts' load-balancing term (coefficient included), once per counted
    # token like the loss it joins, as transformers adds it; evaluation above reports the LM loss alone.
    balance = router_aux_loss(model)
    extra = 0.0 if balance is None else balance * jnp.sum(weights)
    load = expert_load(model)  # per token, as the step's metrics are: the step's token-weighted mean share
    sums = None if load is None else {"expert_load": load * jnp.sum(weights)}
    if kl is not None:
        reference, beta = kl
        reference_hidden = jax.lax.stop_gradient(reference(ids, positions=positions, return_hidden=True, **documents))
        sums = {**(sums or {}),
                "kl_to_base": kl_to_reference(hidden, model, reference_hidden, reference, weights, chunk_tokens)}
        extra = extra + beta * sums["kl_to_base"]
    share = 1.0  # of the cross-entropy in the loss
    if distill is not None:
        teacher, alpha, temperature = distill
        teacher_hidden = jax.lax.stop_gradient(teacher(ids, positions=positions, return_hidden=True, **documents))
        sums = {**(sums or {}), "distill_kl": distill_kl(hidden, model, teacher_hidden, teacher, weights, chunk_tokens,
                                                          temperature)}
        extra = extra + alpha * temperature**2 * sums["distill_kl"]  # T²: the soft targets' gradients scale as 1/T²
        share = 1.0 - alpha
    if num_sources:
        nll = _token_nll(model.logits(hidden), batch["targets"])
        by_source = source_terms(nll, weights, batch["source_id"], num_sources)
        return LossTerms(share * jnp.sum(nll * weights) + extra, jnp.sum(weights), None, by_source, sums=sums)
    loss_sum = cross_entropy(hidden, model, batch["targets"], weights, chunk_tokens)
    return LossTerms(share * loss_sum + extra, jnp.sum(weights), None, sums=sums)


def _flat_pairs(x: jax.Array) -> jax.Array:
    """[pairs, 2, seq] -> [2 x pairs, seq]: chosen0, rejected0, chosen1, ..."""
    return x.reshape(-1, x.shape[-1])


def inputs_mask(batch) -> jax.Array:
    """float32 [2 x pairs, seq]: the completion tokens of a preference batch, rows as `completion_logps` runs them."""
    return _flat_pairs(batch["completion_mask"]).astype(jnp.float32)


def completion_logps(model, batch, chunk_tokens: int = 0, with_hidden: bool = False):
    """(summed completion log-probs, completion token counts), each float32 [pairs, 2], of a preference batch
    ([pairs, 2, seq] arrays, see compute/preference.py): one forward of chosen and rejected together.
    `with_hidden` also returns the final hidden states and the model's inputs (for a KL on the same rows)."""
    pairs, _, seq = batch["input_ids"].shape
    inputs = dict(input_ids=_flat_pairs(batch["input_ids"]),
                  positions=jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (2 * pairs, seq)),
                  lengths=jnp.sum(_flat_pairs(batch["attention_mask"]), axis=-1, dtype=jnp.int32))
    hidden = model(**inputs, return_hidden=True)
    mask = inputs_mask(batch)
    logps = -sequence_nll(hidden, model, _flat_pairs(batch["targets"]), mask, chunk_tokens)
    result = logps.reshape(pairs, 2), jnp.sum(mask, -1).reshape(pairs, 2)
    return (result, hidden, inputs) if with_hidden else result


def token_logps(model, batch, temperature: float = 1.0, chunk_tokens: int = 0) -> jax.Array:
    """log softmax(logits / temperature)[target] of every position of one-sequence-per-row [rows, seq] arrays
    (`input_ids`, `targets`, `attention_mask`): float32 [rows, seq], the vocabulary projected a chunk of
    positions at a time (each chunk recomputed backward), as `sequence_nll`."""
    rows, seq = batch["input_ids"].shape
    lengths = jnp.sum(batch["attention_mask"], axis=-1, dtype=jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (rows, seq))
    hidden = model(batch["input_ids"], positions=positions, lengths=lengths, return_hidden=True)
    per_token = lambda h, t: -_token_nll(model.logits(h).astype(jnp.float32) / temperature, t)  # noqa: E731
    chunks = _chunked((hidden, batch["targets"], batch["attention_mask"]), chunk_tokens)
    if chunks is None:
        return per_token(hidden, batch["targets"])
    checkpointed = jax.checkpoint(per_token)
    _, out = jax.lax.scan(lambda carry, xs: (carry, checkpointed(xs[0], xs[1])), None, chunks[:2])
    return jnp.moveaxis(out, 0, 1).reshape(rows, -1)[:, :seq]  # [chunks, rows, width] -> [rows, seq]


def sequence_nll(hidden, model, targets, weights, chunk_tokens: int):
    """Per row, the sum over its tokens of weights * -log softmax(model.logits(hidden))[target]: float32 [rows].
    Chunked as `cross_entropy` (each chunk's logits recomputed backward), so [rows, seq, vocab] float32 logits
    never exist at once."""
    per_row = lambda h, t, w: jnp.sum(_token_nll(model.logits(h), t) * w, axis=-1)  # noqa: E731
    chunks = _chunks(hidden, targets, weights, chunk_tokens)
    if chunks is None:
        return per_row(hidden, targets, weights)
    per_chunk = jax.checkpoint(per_row)
    total, _ = jax.lax.scan(lambda acc, xs: (acc + per_chunk(*xs), None), jnp.zeros(targets.shape[0], jnp.float32),
                            chunks)
    return total


def kl_to_reference(hidden, model, reference_hidden, reference, weights, chunk_tokens: int):
    """Sum over tokens of weights * KL(softmax(model.logits(hidden)) || softmax(reference.logits(reference_hidden))),
    in float32; chunked as `cross_entropy` (each chunk recomputed backward). No gradient reaches the reference."""

    def per_chunk(h, r, w):
        log_p = jax.nn.log_softmax(model.logits(h).astype(jnp.float32), -1)
        log_q = jax.lax.stop_gradient(jax.nn.log_softmax(reference.logits(r).astype(jnp.float32), -1))
        return jnp.sum(jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1) * w)

    return _chunked_sum(per_chunk, (hidden, reference_hidden, weights), chunk_tokens)


def distill_kl(hidden, model, teacher_hidden, teacher, weights, chunk_tokens: int, temperature: float = 1.0):
    """Sum over tokens of weights * KL(softmax(teacher logits / T) || softmax(model logits / T)), in float32 (the
    teacher's distribution first: the student learns to cover it, Hinton et al.'s soft targets); chunked as
    `kl_to_reference`. No gradient reaches the teacher."""

    def per_chunk(h, t, w):
        log_q = jax.nn.log_softmax(model.logits(h).astype(jnp.float32) / temperature, -1)
        log_p = jax.lax.stop_gradient(jax.nn.log_softmax(teacher.logits(t).astype(jnp.float32) / temperature, -1))
        return jnp.sum(jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1) * w)

    return _chunked_sum(per_chunk, (hidden, teacher_hidden, weights), chunk_tokens)


def _chunked_sum(per_chunk, arrays: tuple, chunk_tokens: int):
    """per_chunk(*arrays) summed a chunk of positions at a time (see `_chunked`), each chunk recomputed backward, so
    the [tokens, vocab] logits inside per_chunk exist one chunk at a time."""
    chunks = _chunked(arrays, chunk_tokens)
    if chunks is None:
        return per_chunk(*arrays)
    checkpointed = jax.checkpoint(per_chunk)
    total, _ = jax.lax.scan(lambda acc, xs: (acc + checkpointed(*xs), None), jnp.zeros((), jnp.float32), chunks)
    return total


def source_terms(nll, weights, source_ids, num_sources: int):
    """(loss sums, token counts), each float32 [num_sources]: the loss split by the source of each token.

    `source_ids` is the pipeline's per-token source (-1 = padding, which has weight 0 anyway); a
    classification row has one loss, and its first token ([CLS]) names the row's source."""
    if source_ids.ndim > nll.ndim:
        source_ids = source_ids[..., 0]
    ids = jnp.maximum(source_ids, 0).reshape(-1)
    sums = jax.ops.segment_sum((nll * weights).reshape(-1), ids, num_segments=num_sources)
    return sums, jax.ops.segment_sum(weights.reshape(-1), ids, num_segments=num_sources)


def cross_entropy(hidden, model, targets, weights, chunk_tokens: int):
    """Sum over tokens of weights * -log softmax(model.logits(hidden))[target], in float32.

    hidden [batch, seq, dim]. With more than `chunk_tokens` tokens the sequence axis is cut into
    chunks of `chunk_tokens // batch` positions (every row in every chunk, so a data-parallel
    batch stays spread over its devices) and a scan projects one chunk at a time. When the output
    projection is one matrix (`model.output_kernel()`), each chunk's gradients are computed in the
    forward pass, where d logits = softmax - one-hot is known (3 matmuls a chunk, as unchunked);
    otherwise (e.g. LoRA on the LM head) `jax.checkpoint` recomputes each chunk's logits backward.
    """
    chunks = _chunks(hidden, targets, weights, chunk_tokens)
    if chunks is None:
        return _nll_sum(model.logits(hidden), targets, weights)
    hidden, targets, weights = chunks
    kernel = model.output_kernel()
    if kernel is not None:
        return _fused_cross_entropy(hidden, kernel.astype(hidden.dtype), targets, weights)
    per_chunk = jax.checkpoint(lambda h, t, w: _nll_sum(model.logits(h), t, w))
    total, _ = jax.lax.scan(lambda acc, xs: (acc + per_chunk(*xs), None), jnp.zeros((), jnp.float32),
                            (hidden, targets, weights))
    return total


def nll_and_correct(hidden, model, targets, weights, chunk_tokens: int):
    """(loss sum, how many counted tokens have the target as argmax), a chunk at a time as `cross_entropy`;
    for evaluation (no gradients), so a plain scan."""

    def score(h, t, w):
        logits = model.logits(h).astype(jnp.float32)
        return _nll_sum(logits, t, w), jnp.sum((jnp.argmax(logits, -1) == t) * w)

    chunks = _chunks(hidden, targets, weights, chunk_tokens)
    if chunks is None:
        return score(hidden, targets, weights)
    zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    totals, _ = jax.lax.scan(lambda acc, xs: (jax.tree.map(jnp.add, acc, score(*xs)), None), zeros, chunks)
    return totals


def _chunks(hidden, targets, weights, chunk_tokens: int):
    """hidden, targets, weights as [chunks, batch, width, ...] (see `cross_entropy`); None if one chunk holds all."""
    return _chunked((hidden, targets, weights), chunk_tokens)


def _chunked(arrays: tuple, chunk_tokens: int):
    """Each of `arrays` ([batch, seq, ...], the last one the weights) as [chunks, batch, width, ...]; None if one
    chunk holds all."""
    batch, seq = arrays[-1].shape
    if chunk_tokens <= 0 or batch * seq <= chunk_tokens:
        return None
    width = max(1, chunk_tokens // batch)
    pad = -seq % width
    if pad:  # padded positions carry weight 0
        arrays = tuple(jnp.pad(x, ((0, 0), (0, pad), *((0, 0),) * (x.ndim - 2))) for x in arrays)
    count = (seq + pad) // width
    # [batch, chunks * width, ...] -> [chunks, batch, width, ...]: the scan walks the leading axis.
    return tuple(jnp.moveaxis(x.reshape(batch, count, width, *x.shape[2:]), 1, 0) for x in arrays)


def _token_nll(logits, targets):
    logits = logits.astype(jnp.float32)
    target = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - target


def _nll_sum(logits, targets, weights):
    return jnp.sum(_token_nll(logits, targets) * weights)


def _chunk_loss_and_grads(hidden, kernel, targets, weights):
    """Loss and its gradients wrt hidden [chunks, ...] and kernel [dim, vocab], one chunk at a time."""

    def chunk(carry, xs):
        total, d_kernel = carry
        h, t, w = xs
        logits = jnp.einsum("bsd,dv->bsv", h, kernel, preferred_element_type=jnp.float32)
        logz = jax.nn.logsumexp(logits, axis=-1)
        total += jnp.sum((logz - jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]) * w)
        d_logits = (jnp.exp(logits - logz[..., None]) - jax.nn.one_hot(t, logits.shape[-1])) * w[..., None]
        d_logits = d_logits.astype(h.dtype)
        d_hidden = jnp.einsum("bsv,dv->bsd", d_logits, kernel, preferred_element_type=jnp.float32).astype(h.dtype)
        d_kernel += jnp.einsum("bsd,bsv->dv", h, d_logits, preferred_element_type=jnp.float32)
        return (total, d_kernel), d_hidden

    start = (jnp.zeros((), jnp.float32), jnp.zeros(kernel.shape, jnp.float32))
    (total, d_kernel), d_hidden = jax.lax.scan(chunk, start, (hidden, targets, weights))
    return total, (d_hidden, d_kernel.astype(kernel.dtype))


@jax.custom_vjp
def _fused_cross_entropy(hidden, kernel, targets, weights):
    return _chunk_loss_and_grads(hidden, kernel, targets, weights)[0]


def _fused_forward(hidden, kernel, targets, weights):
    return _chunk_loss_and_grads(hidden, kernel, targets, weights)


def _fused_backward(grads, g):
    d_hidden, d_kernel = grads  # of the loss itself: the loss is linear in its cotangent g
    return (g * d_hidden).astype(d_hidden.dtype), (g * d_kernel).astype(d_kernel.dtype), None, None


_fused_cross_entropy.defvjp(_fused_forward, _fused_backward)


def batch_for(task: str, batch: dict, *, sources: bool = False, reference: bool = False) -> dict:
    """The arrays of a pipeline batch that the step needs; `source_id` only when it splits the loss by source,
    `reference_logps` only when the batch carries the reference's log-probs (dpo.precompute_reference)."""
    keys = (*BATCH_KEYS[task], *(("source_id",) if sources else ()), *(("reference_logps",) if reference else ()))
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"task {task!r}: batch lacks {missing}; it has {sorted(batch)}")
    return {k: batch[k] for k in keys}
