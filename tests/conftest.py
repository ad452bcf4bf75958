"""Shared fixtures: paths to the shipped assets and tiny Hugging Face checkpoints written on the fly."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One XLA compilation cache per test run, made by the first process that imports this file (pytest-xdist's
# controller, before it starts its workers) and inherited by the workers and every subprocess they start:
# the tiny models' programs repeat from test to test (same shapes, same settings), and compiling them is most
# of what a CPU test spends. A run starts cold, as CI's clean clone does.
_OWN_COMPILATION_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_COMPILATION_CACHE:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxlm-tests-xla-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import pytest  # noqa: E402

from jaxlm import assets  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    return assets.smollm2_gguf()


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    return assets.minilm_dir()


def pytest_unconfigure(config):
    if _OWN_COMPILATION_CACHE:
        import shutil

        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
