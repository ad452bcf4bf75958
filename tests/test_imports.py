"""Imports say what they need: the models, the sampler and the training step load without
TensorFlow, and no jaxlm import changes the environment beyond what JAX itself does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WITHOUT_TENSORFLOW = ["jaxlm", "jaxlm.models", "jaxlm.hf", "jaxlm.sampling", "jaxlm.errors", "jaxlm.cli",
                      "jaxlm.data", "jaxlm.train", "jaxlm.train.config", "jaxlm.train.engine", "jaxlm.compute.step",
                      "jaxlm.train.inputs", "jaxlm.train.dry_run",
                      "jaxlm.synth.cli", "jaxlm.eval.cli", "jaxlm.eval.scoring"]
HEAVY = ("tensorflow", "tensorflow_datasets")

PROBE = """
import importlib, json, os, sys
before = dict(os.environ)
importlib.import_module(sys.argv[1])
after = dict(os.environ)
print(json.dumps({
    "changed": {k: v for k, v in after.items() if before.get(k) != v},
    "removed": sorted(set(before) - set(after)),
    "heavy": [m for m in %r if m in sys.modules],
}))
""" % (HEAVY,)  # noqa: UP031  the probe's own braces would need doubling for str.format


def fresh_import(module: str) -> dict:
    """Imports `module` in a new interpreter with a minimal environment (none of the variables
    this test process or JAX have set), from the repository root so this checkout's jaxlm loads."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    result = subprocess.run([sys.executable, "-c", PROBE, module], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def what_jax_sets() -> dict:
    return fresh_import("jax")["changed"]


@pytest.mark.parametrize("module", WITHOUT_TENSORFLOW)
def test_module_imports_without_tensorflow_or_environment_changes(module, what_jax_sets):
    seen = fresh_import(module)
    assert seen["heavy"] == [], f"importing {module} loads {seen['heavy']}"
    assert seen["removed"] == []
    own = {k: v for k, v in seen["changed"].items() if what_jax_sets.get(k) != v}
    assert own == {}, f"importing {module} sets {own} (JAX alone sets {what_jax_sets})"


def test_the_probe_sees_tensorflow_where_the_data_pipeline_loads_it():
    assert "tensorflow" in fresh_import("jaxlm.data.pipeline")["heavy"]
