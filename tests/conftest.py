"""Shared fixtures: paths to the shipped assets and tiny Hugging Face checkpoints written on the fly."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from jaxlm import assets  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    return assets.smollm2_gguf()


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    return assets.minilm_dir()
