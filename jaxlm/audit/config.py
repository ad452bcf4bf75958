"""Everything one audit run needs to know, as one object (the CLI fills it in; its defaults are these)."""

from __future__ import annotations

import dataclasses

from jaxlm.audit.flags import DEFAULT_REMOVE
from jaxlm.errors import UserError


class AuditError(UserError):
    """A problem with the audit's inputs or options that the user can fix."""


@dataclasses.dataclass
class AuditConfig:
    data: str
    out: str = "audit"
    references: list[str] = dataclasses.field(default_factory=list)
    evals: list[str] = dataclasses.field(default_factory=list)
    model: str | None = "smollm2"  # "smollm2" = the shipped GGUF; a path; None = no perplexity
    embedder: str | None = "minilm"  # "minilm", "tfidf", a model folder, or None = no topics
    remove: tuple[str, ...] = DEFAULT_REMOVE
    gates: list[str] = dataclasses.field(default_factory=list)  # "key>value" (see gates.py)
    near_duplicate_threshold: float = 0.8
    shingle_words: int = 5
    num_perm: int = 128
    ngram: int = 13
    max_perplexity: float | None = None
    perplexity_batch: int = 16
    perplexity_tokens: int = 256
    self_bleu_sample: int = 200
    topic_sample: int = 1000
    terms: str | None = None  # demographic term groups JSON (default: the shipped list)
    skip_bad: bool = False  # skip unreadable records (counted) instead of stopping
    progress: bool = True
    seed: int = 0
    engine: str = "local"  # "ray": measure the files of a DATA folder on Ray workers (see sharded.py)
    workers: int = 2
