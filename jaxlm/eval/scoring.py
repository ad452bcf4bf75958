"""A model's scores on batches of the data pipeline, for every task.

`score_batches(evaluate, batches, task, label_names)` runs `evaluate(batch) -> (loss_sum, count,
correct, argmax predictions)` over the batches (the trainer passes its compiled eval step, `jaxlm eval` one
built by `batch_evaluator`) and turns what comes back into the scores of `metrics.py`:

* sft / causal_lm: loss, perplexity and next-token accuracy over the tokens the loss counts;
* token_classification: seqeval's entity scores and report, and a per-tag report;
* classification: accuracy, macro-F1, per-class report, confusion matrix;
* dpo / orpo / simpo: the loss per pair and the objective's metrics (TRL's `rewards/*`, `logps/*`), means over pairs.

The host waits for the device once, after the last batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import numpy as np

from jaxlm.eval import metrics
from jaxlm.tasks import IGNORE_LABEL, PREFERENCE_TASKS

LM_TASKS = ("sft", "causal_lm")


def score_batches(evaluate: Callable, batches: Iterable[dict], task: str,
                  label_names: list[str] | None = None) -> tuple[dict, list[tuple]]:
    """(scores of `task`, see the module docstring; per example (true, predicted) label names for the
    labelling tasks, in batch order, empty for the LM tasks). `label_names` for the labelling tasks.

    In a multi-process run every process calls this with its own rows of the same steps; the sums are
    global already, and each process's labels and predictions are gathered so every one scores them all."""
    from jaxlm.compute import distributed

    outputs, labels = [], []
    for batch in batches:
        outputs.append(evaluate(batch))
        if "labels" in batch:
            labels.append(batch["labels"])
    if task in PREFERENCE_TASKS:  # (loss_sum, count, ..., {metric: sum}) per batch: means over the pairs
        got = jax.device_get([(o[0], o[1], o[4]) for o in outputs])
        pairs = max(float(sum(c for _, c, _ in got)), 1.0)
        totals = {k: float(sum(m[k] for _, _, m in got)) / pairs for k in (got[0][2] if got else {})}
        return {"loss": float(sum(loss for loss, _, _ in got)) / pairs, **totals}, []
    sums = jax.device_get([o[:3] for o in outputs])
    loss_sum, count, correct = (float(sum(np.sum(s[i]) for s in sums)) for i in range(3))
    if task in LM_TASKS:
        return metrics.token_scores(loss_sum, count, correct), []
    labels = distributed.gather_rows(labels)  # every process's rows, in batch order
    predictions = distributed.host_copy([o[3] for o in outputs])
    scores = {"loss": loss_sum / max(count, 1.0)}
    if task == "token_classification":
        from jaxlm.data.encode import word_tags

        true_tags, predicted_tags = [], []
        for t, p in zip(labels, predictions, strict=False):
            t, p = word_tags(t, p, label_names)
            true_tags += t
            predicted_tags += p
        pairs = list(zip(true_tags, predicted_tags, strict=False))
        return {**scores, **metrics.ner_scores(true_tags, predicted_tags)}, pairs
    if task == "classification":
        labels = np.concatenate([t.reshape(-1) for t in labels]) if labels else np.zeros(0, int)
        guesses = np.concatenate([p.reshape(-1) for p in predictions]) if labels.size else np.zeros(0, int)
        real = labels != IGNORE_LABEL  # the padding rows of a short last batch
        pairs = [(label_names[t], label_names[p]) for t, p in zip(labels[real], guesses[real], strict=False)]
        return {**scores, **metrics.classification_scores(labels[real], guesses[real], label_names)}, pairs
    raise ValueError(f"no scores for task {task!r}")


def batch_evaluator(model, task: str, compute_dtype: str = "float32") -> Callable:
    """`evaluate(batch) -> (loss_sum, count, predictions)` for a model outside a training run:
    the trainer's own eval step over the whole model, on every local device."""
    from flax import nnx

    from jaxlm.compute import sharding
    from jaxlm.compute.losses import batch_for
    from jaxlm.compute.step import make_eval_step

    mesh = sharding.make_mesh(-1, 1)
    # Every Param goes to the first group; the second ("frozen" in training) is empty.
    graphdef, params, frozen, rest = nnx.split(model, nnx.Param, nnx.Param, ...)
    params_sh, frozen_sh = sharding.state_shardings(params, mesh), sharding.state_shardings(frozen, mesh)
    rest_sh = jax.tree.map(lambda _: sharding.replicated(mesh), rest)
    batch_sh = sharding.batch_sharding(mesh, accumulated=False)
    step = make_eval_step(graphdef, task=task, compute_dtype=jax.numpy.dtype(compute_dtype),
                          shardings=(params_sh, frozen_sh, rest_sh, batch_sh, None))
    params, frozen, rest = (jax.device_put(t, s) for t, s in ((params, params_sh), (frozen, frozen_sh),
                                                            (rest, rest_sh)))

    def evaluate(batch: dict):
        arrays = {k: jax.make_array_from_process_local_data(batch_sh, np.asarray(v))
                  for k, v in batch_for(task, batch).items()}
        return step(params, frozen, rest, arrays, None)

    return evaluate


def headline(scores: dict, prefix: str = "") -> dict[str, float]:
    """The scalar scores (no reports, matrices or counts), keys prefixed: what a metrics log records."""
    return {f"{prefix}{k}": float(v) for k, v in scores.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("tokens", "examples", "batches")}
