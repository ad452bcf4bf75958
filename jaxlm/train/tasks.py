"""Per-task forward passes and losses. Each returns token-summed loss and the token count,
so gradient accumulation and data parallelism reduce exactly like one big batch.

* sft / causal_lm: batches from the data pipeline carry `targets` and `loss_mask` (SFT masks
  everything but assistant/completion tokens; causal LM everything but padding), plus
  `segment_ids`/`positions` so packed documents never attend to each other. A prompt-tuned model
  sees its virtual tokens first; their outputs are dropped, so targets and masks stay as they are.
* token_classification: BERT tagger, `labels` of -100 are ignored (only first sub-tokens count).
* classification: BERT sequence classifier, one label per row (softmax cross-entropy over the
  classes, binary included); a row labelled -100 (padding of the last eval batch) does not count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxlm.models.prompt_tuning import prepend_virtual_tokens
from jaxlm.tasks import IGNORE_LABEL

BATCH_KEYS = {
    "sft": ("input_ids", "targets", "loss_mask", "segment_ids", "positions"),
    "causal_lm": ("input_ids", "targets", "loss_mask", "segment_ids", "positions"),
    "token_classification": ("input_ids", "attention_mask", "token_type_ids", "labels"),
    "classification": ("input_ids", "attention_mask", "token_type_ids", "labels"),
}

# Tasks whose eval step returns the argmax class of each logit row (for entity or class metrics).
PREDICTS_CLASSES = ("token_classification", "classification")


def forward(task: str, model, batch):
    """Logits for a batch (float32)."""
    if task in PREDICTS_CLASSES:
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    else:
        ids, positions, segments, virtual = prepend_virtual_tokens(
            model, batch["input_ids"], batch["positions"], batch["segment_ids"])
        logits = model(ids, positions=positions, segment_ids=segments)[:, virtual:]
    return logits.astype(jnp.float32)


def loss_terms(task: str, logits, batch):
    """(sum of per-token (per-row for classification) losses, how many count), both float32 scalars."""
    nll, weights = token_losses(task, logits, batch)
    return jnp.sum(nll * weights), jnp.sum(weights)


def token_losses(task: str, logits, batch):
    """(loss of each token (of each row for classification), 1.0 where it counts else 0.0), float32."""
    if task in PREDICTS_CLASSES:
        labels = batch["labels"]
        weights = (labels != IGNORE_LABEL).astype(jnp.float32)
        targets = jnp.where(labels == IGNORE_LABEL, 0, labels)
    else:
        weights = batch["loss_mask"].astype(jnp.float32)
        targets = batch["targets"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets), weights


def source_terms(nll, weights, source_ids, num_sources: int):
    """(loss sums, token counts), each float32 [num_sources]: the loss split by the source of each token.

    `source_ids` is the pipeline's per-token source (-1 = padding, which has weight 0 anyway); a
    classification row has one loss, and its first token ([CLS]) names the row's source."""
    if source_ids.ndim > nll.ndim:
        source_ids = source_ids[..., 0]
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
