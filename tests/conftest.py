"""Shared fixtures: paths to the shipped assets and tiny Hugging Face checkpoints written on the fly."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from jaxlm import assets  # noqa: E402

# Files whose tests run for a minute or more (several processes, SIGKILL and resume, Ray): started first, so
# that the two CI workers do not finish on one of them alone while the other waits.
SLOW_FILES = ("test_train_distributed.py", "test_train_resume.py", "test_multi_device.py", "test_ray_engines.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in SLOW_FILES)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    return assets.smollm2_gguf()


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    return assets.minilm_dir()
