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
    targets, weights = _targets(task, batch)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(nll * weights), jnp.sum(weights)


def correct_count(task: str, logits, batch):
    """How many of the tokens (rows) that `loss_terms` counts have the target as their argmax (float32)."""
    targets, weights = _targets(task, batch)
    return jnp.sum((jnp.argmax(logits, -1) == targets) * weights)


def _targets(task: str, batch):
    if task in PREDICTS_CLASSES:
        labels = batch["labels"]
        return jnp.where(labels == IGNORE_LABEL, 0, labels), (labels != IGNORE_LABEL).astype(jnp.float32)
    return batch["targets"], batch["loss_mask"].astype(jnp.float32)


def batch_for(task: str, batch: dict) -> dict:
    """The arrays of a pipeline batch that the step needs (the rest, e.g. source_id, stays on host)."""
    missing = [k for k in BATCH_KEYS[task] if k not in batch]
    if missing:
        raise KeyError(f"task {task!r}: batch lacks {missing}; it has {sorted(batch)}")
    return {k: batch[k] for k in BATCH_KEYS[task]}
