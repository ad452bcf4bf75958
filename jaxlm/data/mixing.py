"""Mixing training sources: how often each source is sampled.

* ``static``: probabilities proportional to the configured weights.
* ``temperature`` (T5, mT5): p_i ∝ (w_i · n_i)^(1/T), with n_i the source's
  record count. T = 1 samples proportionally to (weighted) size; larger T
  flattens towards uniform so small sources are not drowned out.
* ``bandit``: weights that change while training (a policy in
  :mod:`jaxlm.data.bandit` sets them from the training loss), starting from the
  configured weights. Mixed on the host by :class:`RowMixer`.

Static and temperature mixing is ``tf.data.Dataset.sample_from_datasets`` over
records, before packing (:func:`mix`). Weights that change cannot live inside
tf.data: its prefetching runs ahead of training by a distance that depends on
timing, so a new weight would take effect at an unpredictable batch. Bandit
mixing therefore packs each source into rows on its own and draws, for every
row of batch ``b``, its source on the host, from a generator seeded by
(seed, shard, b) with the weights in force for ``b`` (:class:`RowMixer`).
Checks live in :func:`jaxlm.data.config.check_mixing`, which the training config
runs before any work.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from jaxlm.data.config import check_mixing

_DRAW_SALT = 0x6D6978  # keeps the mixer's draws apart from other users of the same seed


def mixture_weights(weights: list[float], sizes: list[int], *, mode: str = "static",
                    temperature: float = 2.0) -> np.ndarray:
    """Sampling probabilities per source (they sum to 1); for ``bandit``, its starting point."""
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
    weights = [float(w) for w in weights]
    return tf.data.Dataset.sample_from_datasets(datasets, weights=weights, seed=seed,
                                                stop_on_empty_dataset=not finite)


def draw_sources(weights, count: int, *, seed: int, shard_index: int, batch_index: int) -> np.ndarray:
    """The source of each of the ``count`` rows of batch ``batch_index``: a function of its arguments only."""
    p = np.asarray(weights, np.float64)
    rng = np.random.default_rng([_DRAW_SALT, seed, shard_index, batch_index])
    return rng.choice(len(p), size=count, p=p / p.sum())


class RowMixer:
    """Batches of rows drawn from per-source row streams, with weights that may change between batches.

    A batch depends only on its index, the weights in force for it and how many rows each
    source gave before (each stream is a fixed, seeded sequence), so the state is the rows taken
    per source and the weight schedule. A weight change names the batch it applies from; one that
    comes after that batch was drawn raises instead of silently changing the data (a prefetcher
    running ahead of the mixing policy would cause it).
    """

    def __init__(self, streams: list[tf.data.Dataset], weights, *, seed: int, shard_index: int, batch_size: int):
        self._streams, self._seed, self._shard, self._batch_size = streams, seed, shard_index, batch_size
        self.schedule: list[tuple[int, list[float]]] = [(0, [float(w) for w in weights])]  # (from batch, weights)
        self.rows = np.zeros(len(streams), np.int64)  # rows taken from each source
        self.drawn = 0  # batches drawn

    def weights_for(self, batch_index: int) -> np.ndarray:
        return np.asarray(next(w for start, w in reversed(self.schedule) if start <= batch_index))

    def set_weights(self, weights, *, from_batch: int) -> None:
        if from_batch < self.drawn:
            raise RuntimeError(f"mixing weights for batch {from_batch} came after batch {self.drawn - 1} was "
                               "drawn: something reads the training data ahead of the mixing policy")
        if len(weights) != len(self._streams) or not np.all(np.asarray(weights) >= 0):
            raise ValueError(f"expected {len(self._streams)} non-negative weights, got {list(weights)}")
        self.schedule = [entry for entry in self.schedule if entry[0] < from_batch]
        self.schedule.append((int(from_batch), [float(w) for w in weights]))

    def batches(self):
        """Batches from the current position on (an endless generator)."""
        chunks = [s.skip(int(n)).batch(self._batch_size).as_numpy_iterator()
                  for s, n in zip(self._streams, self.rows, strict=False)]
        buffers: list[list[dict]] = [[] for _ in self._streams]
        while True:
            sources = draw_sources(self.weights_for(self.drawn), self._batch_size, seed=self._seed,
                                   shard_index=self._shard, batch_index=self.drawn)
            rows = []
            for source in sources:
                if not buffers[source]:
                    chunk = next(chunks[source], None)
                    if chunk is None:  # a stage ended its stream on bad input; the pipeline raises that error
                        return
                    size = len(next(iter(chunk.values())))
                    buffers[source] = [{k: v[i] for k, v in chunk.items()} for i in reversed(range(size))]
                rows.append(buffers[source].pop())
                self.rows[source] += 1
            self.drawn += 1
            yield {k: np.stack([row[k] for row in rows]) for k in rows[0]}

    def get_state(self) -> dict:
        return {"rows": self.rows.tolist(), "schedule": [[b, w] for b, w in self.schedule], "drawn": self.drawn}

    def set_state(self, state: dict) -> None:
        self.rows = np.asarray(state["rows"], np.int64)
        self.schedule = [(int(b), [float(x) for x in w]) for b, w in state["schedule"]]
        self.drawn = int(state["drawn"])
