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

# One interpreter imports JAX, then forks a child per module: each child starts from the state a fresh
# interpreter has after `import jax` (what every jaxlm module imports first), which costs the suite one
# JAX import instead of one per module. The first line is what importing JAX itself changed.
PROBE = """
import importlib, json, os, sys
def seen(before):
    after = dict(os.environ)
    return {"changed": {k: v for k, v in after.items() if before.get(k) != v},
            "removed": sorted(set(before) - set(after)),
            "heavy": [m for m in %r if m in sys.modules]}
start = dict(os.environ)
import jax
print(json.dumps({"module": "jax", **seen(start)}), flush=True)
for module in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        before = dict(os.environ)
        importlib.import_module(module)
        print(json.dumps({"module": module, **seen(before)}), flush=True)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        sys.exit(f"importing {module} failed")
""" % (HEAVY,)  # noqa: UP031  the probe's own braces would need doubling for str.format


def fresh_imports(modules: list[str]) -> dict[str, dict]:
    """What importing each module did, in a new interpreter with a minimal environment (none of the variables
    this test process or JAX have set), from the repository root so this checkout's jaxlm loads."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    result = subprocess.run([sys.executable, "-c", PROBE, *modules], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {row["module"]: row for row in map(json.loads, result.stdout.strip().splitlines())}


@pytest.fixture(scope="module")
def probed() -> dict[str, dict]:
    return fresh_imports([*WITHOUT_TENSORFLOW, "jaxlm.data.pipeline"])


@pytest.mark.parametrize("module", WITHOUT_TENSORFLOW)
def test_module_imports_without_tensorflow_or_environment_changes(module, probed):
    seen, what_jax_sets = probed[module], probed["jax"]["changed"]
    assert probed["jax"]["heavy"] == [] and seen["heavy"] == [], f"importing {module} loads {seen['heavy']}"
    assert seen["removed"] == []
    own = {k: v for k, v in seen["changed"].items() if what_jax_sets.get(k) != v}
    assert own == {}, f"importing {module} sets {own} (JAX alone sets {what_jax_sets})"


def test_the_probe_sees_tensorflow_where_the_data_pipeline_loads_it(probed):
    assert "tensorflow" in probed["jaxlm.data.pipeline"]["heavy"]
