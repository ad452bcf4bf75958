"""Per-task forward passes and losses. Each returns token-summed loss and the token count,
so gradient accumulation and data parallelism reduce exactly like one big batch.

* sft / causal_lm: batches from the data pipeline carry `targets` and `loss_mask` (SFT masks
  everything but assistant/completion tokens; causal LM everything but padding), plus
  `segment_ids`/`positions` so packed documents never attend to each other.
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


def forward(task: str, model, batch):
    """Logits for a batch (float32)."""
    if task == "token_classification":
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    else:
        logits = model(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    return logits.astype(jnp.float32)


def loss_terms(task: str, logits, batch):
    """(sum of per-token losses, number of tokens that count), both float32 scalars."""
    nll, weights = token_losses(task, logits, batch)
    return jnp.sum(nll * weights), jnp.sum(weights)


def token_losses(task: str, logits, batch):
    """(loss of each token, 1.0 where it counts else 0.0), both float32 [batch, seq]."""
    if task == "token_classification":
        labels = batch["labels"]
        weights = (labels != IGNORE_LABEL).astype(jnp.float32)
        targets = jnp.where(labels == IGNORE_LABEL, 0, labels)
    else:
        weights = batch["loss_mask"].astype(jnp.float32)
        targets = batch["targets"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets), weights


def source_terms(nll, weights, source_ids, num_sources: int):
    """(loss sums, token counts), each float32 [num_sources]: the loss split by the source of each token.

    `source_ids` is the pipeline's per-token source (-1 = padding, which has weight 0 anyway)."""
    ids = jnp.maximum(source_ids, 0).reshape(-1)
    sums = jax.ops.segment_sum((nll * weights).reshape(-1), ids, num_segments=num_sources)
    return sums, jax.ops.segment_sum(weights.reshape(-1), ids, num_segments=num_sources)


def batch_for(task: str, batch: dict, *, sources: bool = False) -> dict:
    """The arrays of a pipeline batch that the step needs; `source_id` only when it splits the loss by source."""
    keys = (*BATCH_KEYS[task], "source_id") if sources else BATCH_KEYS[task]
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"task {task!r}: batch lacks {missing}; it has {sorted(batch)}")
    return {k: batch[k] for k in keys}
