"""`--engine ray`: the measuring pass of the audit over the files of a folder, on Ray workers.

Each file of DATA (a folder; in `read_records` order) is a shard. Workers first count the
records of every shard, which fixes each shard's first global index; then each worker
measures whole shards with its own meters, loading the perplexity model once. The driver
merges the shards' meters and flags in order:

* per-record measures and counters add up (flags, lengths, sums, lexicon counts, ...);
* duplication merges sketches: a shard sends (index, text hash, MinHash signature) per
  record and the driver runs the comparison with all earlier records, as one pass does;
* label conflicts and contradicting answers compare a shard's inputs with earlier ones;
* the self-BLEU and topic samples are bottom-k samples, so merging them is exact.

The report is the one a single pass writes, up to the rounding of float sums. Workers
share one ``PYTHONHASHSEED`` (see `jaxlm.cluster`), since shards compare Python hashes.
The later passes (contradiction groups, writing flagged/clean files) read DATA on the driver.
"""

from __future__ import annotations

import types
from collections import Counter

from jaxlm.audit.config import AuditConfig
from jaxlm.audit.embeddings import make_embedder
from jaxlm.audit.flags import Flags
from jaxlm.audit.items import read_items
from jaxlm.audit.measuring import build_indexes, build_meters, make_scorer, measure, model_path, progress
from jaxlm.data.records import MAX_KEPT_ERRORS, ReadStats, list_files


class _ShardWorker:
    """A Ray actor: one perplexity model, many shards."""

    def __init__(self, config: AuditConfig, indexes):
        self.config, self.indexes = config, indexes
        self.scorer = make_scorer(config)

    def count(self, path: str) -> int:
        return sum(1 for _ in read_items(path, skip_bad=self.config.skip_bad))

    def measure(self, path: str, start: int):
        meters = build_meters(self.config, *self.indexes, scorer=self.scorer, embedder=None, shard=True)
        flags, kinds, stats = Flags(), Counter(), ReadStats()
        measure(meters, flags, kinds, read_items(path, skip_bad=self.config.skip_bad, stats=stats, start=start))
        return meters, flags, kinds, stats


def measure_sharded(config: AuditConfig):
    """(meters, flags, kinds, read stats) of DATA, measured shard by shard on Ray."""
    from jaxlm.cluster import Actors, connect

    shards = list_files(config.data)  # a single file is one shard: split big files to use more workers
    path = model_path(config)  # errors about the model now, not on a worker
    ray, started = connect(config.workers)
    try:
        indexes = ray.get(ray.remote(build_indexes).remote(config))  # hashed with the workers' seed
        pool = Actors(ray, _ShardWorker, (config, indexes), min(config.workers, len(shards)))
        counts = list(pool.map(lambda actor, shard: actor.count.remote(shard), shards))
        starts = [sum(counts[:k]) for k in range(len(shards))]
        scorer = None if path is None else types.SimpleNamespace(  # what the report says of the model
            path=path, max_tokens=config.perplexity_tokens, batch_size=config.perplexity_batch)
        meters = build_meters(config, *indexes, scorer=scorer, embedder=make_embedder(config.embedder))
        flags, kinds, stats = Flags(), Counter(), ReadStats()
        bar = progress(None, config, "audit: measuring shards", total=sum(counts))
        results = pool.map(lambda actor, job: actor.measure.remote(*job), zip(shards, starts, strict=False))
        for (shard_meters, shard_flags, shard_kinds, shard_stats), count in zip(results, counts, strict=False):
            flags.merge(shard_flags)
            for meter, shard_meter in zip(meters, shard_meters, strict=False):
                meter.merge(shard_meter, flags)
            kinds.update(shard_kinds)
            stats.records += shard_stats.records
            stats.skipped += shard_stats.skipped
            stats.errors = (stats.errors + shard_stats.errors)[:MAX_KEPT_ERRORS]
            bar.update(count)
        bar.close()
        pool.kill()
    finally:
        if started:
            ray.shutdown()
    return meters, flags, kinds, stats
