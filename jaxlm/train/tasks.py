"""Per-task forward passes and losses. Each returns token-summed loss and the token count,
so gradient accumulation and data parallelism reduce exactly like one big batch.

* sft / causal_lm: batches from the data pipeline carry `targets` and `loss_mask` (SFT masks
  everything but assistant/completion tokens; causal LM everything but padding), plus
  `segment_ids`/`positions` so packed documents never attend to each other. The loss takes the
  model's final hidden states and projects them to the vocabulary a chunk of positions at a
  time, so float32 logits for the whole batch x vocabulary never exist at once.
* token_classification: BERT tagger, `labels` of -100 are ignored (only first sub-tokens count).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxlm.tasks import IGNORE_LABEL

BATCH_KEYS = {
    "sft": ("input_ids", "targets", "loss_mask", "segment_ids", "positions"),
    "causal_lm": ("input_ids", "targets", "loss_mask", "segment_ids", "positions"),
    "token_classification": ("input_ids", "attention_mask", "token_type_ids", "labels"),
}
BATCH_DTYPES = {"loss_mask": "float32"}  # the pipeline's dtype where it is not int32


def loss_terms(task: str, model, batch, *, chunk_tokens: int = 0):
    """(sum of per-token losses, number of tokens that count, tagger logits or None); float32.

    `chunk_tokens` bounds how many tokens' logits a language-model loss holds at once (0: all)."""
    if task == "token_classification":
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).astype(jnp.float32)
        labels = batch["labels"]
        weights = (labels != IGNORE_LABEL).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(labels == IGNORE_LABEL, 0, labels))
        return jnp.sum(nll * weights), jnp.sum(weights), logits
    hidden = model(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"],
                   return_hidden=True)
    weights = batch["loss_mask"].astype(jnp.float32)
    loss_sum = chunked_cross_entropy(hidden, model.logits, batch["targets"], weights, chunk_tokens)
    return loss_sum, jnp.sum(weights), None


def chunked_cross_entropy(hidden, project, targets, weights, chunk_tokens: int):
    """Sum over tokens of weights * -log softmax(project(hidden))[target], in float32.

    hidden [batch, seq, dim]; `project` maps [..., dim] to [..., vocab] logits. With more than
    `chunk_tokens` tokens the sequence axis is cut into chunks of `chunk_tokens // batch`
    positions (every row in every chunk, so a data-parallel batch stays spread over its
    devices) and a scan projects one chunk at a time; `jax.checkpoint` makes the backward pass
    recompute each chunk's logits instead of keeping them all.
    """

    def nll_sum(h, t, w):
        logits = project(h).astype(jnp.float32)
        target = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return jnp.sum((jax.nn.logsumexp(logits, axis=-1) - target) * w)

    batch, seq = targets.shape
    if chunk_tokens <= 0 or batch * seq <= chunk_tokens:
        return nll_sum(hidden, targets, weights)
    width = max(1, chunk_tokens // batch)
    pad = -seq % width
    if pad:  # padded positions carry weight 0
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets, weights = jnp.pad(targets, ((0, 0), (0, pad))), jnp.pad(weights, ((0, 0), (0, pad)))
    chunks = (seq + pad) // width
    # [batch, chunks * width, ...] -> [chunks, batch, width, ...]: the scan walks the leading axis.
    split = lambda x: jnp.moveaxis(x.reshape(batch, chunks, width, *x.shape[2:]), 1, 0)  # noqa: E731
    per_chunk = jax.checkpoint(nll_sum)

    def body(total, xs):
        return total + per_chunk(*xs), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (split(hidden), split(targets), split(weights)))
    return total


def batch_for(task: str, batch: dict) -> dict:
    """The arrays of a pipeline batch that the step needs (the rest, e.g. source_id, stays on host)."""
    missing = [k for k in BATCH_KEYS[task] if k not in batch]
    if missing:
        raise KeyError(f"task {task!r}: batch lacks {missing}; it has {sorted(batch)}")
    return {k: batch[k] for k in BATCH_KEYS[task]}
