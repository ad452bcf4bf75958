"""Shared fixtures: paths to the shipped assets and tiny Hugging Face checkpoints written on the fly."""

from __future__ import annotations

import gc
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests compile thousands of tiny programs (every eager op is one) and run each a few times, so compiling is
# most of what they spend (tests/test_models.py: 1,293 compilations, 43 of its 77 CPU seconds). Two XLA:CPU
# settings make that cheaper: LLVM at -O0 (tests/test_scan.py: 69 -> 42 CPU seconds; the same arithmetic, as
# fast-math is off at every level), and the elemental IR emitters instead of the MLIR fusion emitters, which build
# MLIR contexts for every program (a one-op program 36 -> 25 ms; the whole suite 850-906 -> 712 s on 2 cores).
# The emitters agree bitwise on exp, log, rsqrt, sin, erf, sigmoid, GELU, SiLU and softmax; tanh differs in the
# last bit (relative 3e-7), inside every tolerance against torch, and the runs compared bitwise with each other
# all run under these flags. XLA's HLO passes, which decide what is computed, the fusions and the buffers, run
# as they do for users. Inherited by every subprocess; `train_helpers.with_devices` adds to it.
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()
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


@pytest.fixture(scope="session")
def synth_model(tmp_path_factory) -> str:
    """The synthesis tests' tiny chat model (`synth_helpers.tiny_synth_model`), written once per worker."""
    from synth_helpers import tiny_synth_model

    return tiny_synth_model(tmp_path_factory.mktemp("synth_model") / "model")


# `make test` hands each file to one pytest-xdist worker (`--dist loadfile`): a file's module fixtures (tiny
# checkpoints, training runs, a server, a Ray cluster, the multi-device processes) are made once, not once per
# worker. (xdist_group marks, which would do that per group, are ignored under pytest 9.2: xdist 3.8 renames the
# item's `_nodeid`, which pytest no longer reads.) Files go out in collection order (`--no-loadscope-reorder`),
# and the files that take longest start first, so that no worker begins a two-minute file while the others are
# finishing: seconds per file (its tests' durations added up) in one `make test` on 2 cores, longest first;
# the rest keep pytest's order.
LONGEST_FIRST = ["test_bad_inputs.py", "test_ray_engines.py", "test_train_distributed.py", "test_moe.py",
                 "test_train_resume.py", "test_train_run.py", "test_quant.py", "test_multi_device.py",
                 "test_synth_run.py", "test_scan.py", "test_data_pipeline.py", "test_models.py",
                 "test_sampling_parity.py", "test_audit_models.py", "test_train_engine.py", "test_smollm2.py",
                 "test_gguf_export.py", "test_train_loop.py", "test_steps_per_call.py", "test_train_sharding.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


def pytest_unconfigure(config):
    if _OWN_COMPILATION_CACHE:
        import shutil

        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _earlier_objects_out_of_the_collectors_way():
    """Objects alive when a test starts are frozen (`gc.freeze`, a constant-time list splice) until its
    module ends. A command that ends in an error runs `gc.collect()` (errors.py: an interrupted run's cycles
    must go while the runtime is whole); in a test worker whose heap holds torch, TensorFlow, JAX and every
    earlier test's objects, that full collection cost ~0.25-1 s per command, and the automatic collections
    walk the same heap. Frozen objects are still freed by reference counting; a cycle among them waits for
    the module's end."""
    gc.freeze()
    yield


@pytest.fixture(scope="module", autouse=True)
def _frozen_objects_collectable_after_each_module():
    yield
    gc.unfreeze()
