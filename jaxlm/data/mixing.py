"""Mixing training sources: how often each source is sampled.

* ``static``: probabilities proportional to the configured weights.
* ``temperature`` (T5, mT5): p_i ∝ (w_i · n_i)^(1/T), with n_i the source's
  record count. T = 1 samples proportionally to (weighted) size; larger T
  flattens towards uniform so small sources are not drowned out.
* ``bandit``: reserved for adaptive mixing (weights updated from the training
  loss). Not implemented: asking for it raises
  :class:`~jaxlm.data.config.MixingConfigError`, as does any other bad setting
  (the checks live in :func:`jaxlm.data.config.check_mixing`, which the
  training config runs before any work).

The mixture is ``tf.data.Dataset.sample_from_datasets``. Its ``weights`` may be
a dataset of per-example weight vectors instead of a constant, which is how an
adaptive mixer can change weights between steps while staying replayable:
record the weight schedule (example index -> weights) in the pipeline state and
build the weights dataset from it. :func:`mix` takes ``weights`` in either form.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from jaxlm.data.config import check_mixing


def mixture_weights(weights: list[float], sizes: list[int], *, mode: str = "static",
                    temperature: float = 2.0) -> np.ndarray:
    """Sampling probabilities per source (they sum to 1)."""
    check_mixing(mode, [float(w) for w in weights], temperature)
    weights = np.asarray(weights, dtype=np.float64)
    if mode == "temperature":
        weights = (weights * np.asarray(sizes, dtype=np.float64)) ** (1.0 / temperature)
    return weights / weights.sum()


def mix(datasets: list[tf.data.Dataset], weights, *, seed: int, finite: bool = False) -> tf.data.Dataset:
    """Samples the next element from source i with probability ``weights[i]``.

    Training sources are infinite (repeated). With ``finite=True`` (one pass for
    evaluation) an exhausted source drops out and the others go on to their end.
    """
    if len(datasets) == 1:
        return datasets[0]
    if not isinstance(weights, tf.data.Dataset):
        weights = [float(w) for w in weights]
    return tf.data.Dataset.sample_from_datasets(datasets, weights=weights, seed=seed,
                                                stop_on_empty_dataset=not finite)
