"""The untrained model's scores (data.test at step 0, the sample answers before training), kept in
`eval.score_cache` so that the next run from the same base model on the same data skips them.

Every run starts from the same base, so the "before" half of the report is the same work each time: on
the CPU it is most of what `make train` spends outside training. An entry's key is a hash of everything
the scores depend on: the model's files (their bytes), the exact test batches and prompts, the settings
that change the numbers (the whole model section, task, compute dtype, loss chunking, seed, answer
length, the general prompts) and the jax version and platform. Anything else changed is a new key, so a
hit is the same computation, never a guess. One process only: several would have to agree to skip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import numpy as np

from jaxlm.errors import warn
from jaxlm.train.config import Config, resolve_path

FORMAT = 1  # bump when what an entry holds changes


def file_digest(path: str) -> str:
    """sha256 of a file's bytes, or of a folder's files (names and bytes, sorted)."""
    digest = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
    for name in files:
        digest.update(os.path.relpath(name, path).encode() + b"\0")
        with open(name, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def batches_digest(batches: list[dict]) -> str:
    digest = hashlib.sha256()
    for batch in batches:
        for name in sorted(batch):
            array = np.ascontiguousarray(batch[name])
            digest.update(f"{name}{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def key_for(cfg: Config, test_batches: list[dict], prompts: list[dict]) -> str | None:
    """The entry's name for this run's step-0 scores; None when the cache is off or several processes run."""
    if not cfg.eval.score_cache or jax.process_count() > 1:
        return None
    from jaxlm.eval.answers import general_prompts

    settings = {
        "format": FORMAT, "jax": jax.__version__, "platform": jax.devices()[0].device_kind,
        "model_files": file_digest(resolve_path(cfg.model.path)), "model": dataclasses.asdict(cfg.model),
        "task": cfg.task, "compute_dtype": cfg.train.compute_dtype, "loss_chunk_tokens": cfg.train.loss_chunk_tokens,
        "seed": cfg.train.seed, "sample_tokens": cfg.eval.sample_tokens, "general": cfg.eval.general_prompts,
        "general_prompts": general_prompts(), "test": batches_digest(test_batches), "prompts": prompts,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load(cfg: Config, key: str | None, part: str) -> dict | None:
    """The cached `part` ("test" or "samples") under `key`, or None."""
    if key is None:
        return None
    try:
        with open(os.path.join(os.path.expanduser(cfg.eval.score_cache), f"{key}.{part}.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):  # absent, or torn by a killed writer: score again
        return None


def save(cfg: Config, key: str | None, part: str, value: dict | None) -> None:
    if key is None or value is None:
        return
    folder = os.path.expanduser(cfg.eval.score_cache)
    path = os.path.join(folder, f"{key}.{part}.json")
    try:
        os.makedirs(folder, exist_ok=True)
        partial = f"{path}.{os.getpid()}.tmp"  # renamed into place: no reader sees half a file, no two runs
        with open(partial, "w", encoding="utf-8") as f:  # from one base write the same file together
            json.dump(value, f, ensure_ascii=False)
        os.replace(partial, path)
    except OSError as e:  # a cache that cannot be written costs the next run time, never this run
        warn(f"eval.score_cache: could not keep the step-0 scores in {folder} ({e}); training goes on")
