"""Data parallel + FSDP over 8 fake CPU devices gives the 1-device run's losses and parameters, with causal
attention in blocks of query rows too (`layers.causal_blocks`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxlm.compute.sharding import param_spec
from train_helpers import with_devices, write_tiny_llama

SCRIPT = r"""
import json, sys
import numpy as np, jax
import jaxlm
from jaxlm.train.config import load_config
from jaxlm.train.engine import build_engine
sys.path.insert(0, {tests!r})
from test_train_engine import lm_batch

def run(model_dir, mesh, out):
  from jaxlm.models import layers
  blocks = layers.query_block
  if mesh.endswith("b"):  # "2x4b": attention in blocks of 4 query rows, as rows past 128 tokens take it
    layers.query_block = lambda length: 4
  data, fsdp = map(int, mesh.rstrip("b").split("x"))
  cfg = load_config(None, [f"model.path={{model_dir}}", "task=causal_lm", "train.batch_size=8", "train.seq_len=16",
                         "train.warmup_steps=0", "train.learning_rate=1e-3", "model.lora.rank=0",
                         f"mesh.data={{data}}", f"mesh.fsdp={{fsdp}}"])
  model, _ = jaxlm.load_pretrained(model_dir)
  engine = build_engine(model, cfg)
  losses = [float(engine.step(lm_batch(i, batch=8))["loss"]) for i in range(3)]
  leaves = jax.tree_util.tree_leaves_with_path(engine.state.params)
  np.savez(out, **{{"/".join(map(str, k)): np.asarray(v) for k, v in leaves}})
  specs = {{"/".join(map(str, k)): str(v.sharding.spec) for k, v in leaves}}
  json.dump({{"losses": losses, "devices": jax.device_count(), "specs": specs}}, open(out + ".json", "w"))
  layers.query_block = blocks

for mesh in sys.argv[2:]:
  run(sys.argv[1], mesh, sys.argv[1] + "-" + mesh)
"""


def run(model_dir, meshes, devices):
    """Runs SCRIPT in a fresh process with `devices` fake CPU devices (XLA_FLAGS must precede jax import)."""
    env = {**os.environ, "XLA_FLAGS": with_devices(devices), "JAX_PLATFORMS": "cpu"}
    script = SCRIPT.format(tests=os.path.dirname(__file__))
    proc = subprocess.run([sys.executable, "-c", script, model_dir, *meshes], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {m: (json.load(open(f"{model_dir}-{m}.json")), dict(np.load(f"{model_dir}-{m}.npz"))) for m in meshes}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    model_dir = write_tiny_llama(tmp_path_factory.mktemp("mesh") / "llama")
    return {**run(model_dir, ["1x1"], 1), **run(model_dir, ["8x1", "2x4", "2x4b"], 8)}


def test_data_parallel_and_fsdp_runs_match_the_single_device_run(runs):
    one, one_params = runs["1x1"]
    assert one["devices"] == 1
    for mesh in ("8x1", "2x4", "2x4b"):  # one test, so pytest-xdist does not start the subprocesses twice
        meta, params = runs[mesh]
        assert meta["devices"] == 8
        np.testing.assert_allclose(meta["losses"], one["losses"], rtol=1e-5, err_msg=mesh)
        for name in one_params:
            np.testing.assert_allclose(params[name], one_params[name], atol=1e-5, rtol=1e-4, err_msg=f"{mesh} {name}")


def test_fsdp_shards_parameters_and_optimizer_state_across_devices(runs):
    meta, _ = runs["2x4"]
    sharded = [name for name, spec in meta["specs"].items() if "fsdp" in spec]
    assert any("embed_tokens" in n for n in sharded) and any("mlp" in n for n in sharded)
    assert all("fsdp" not in spec for name, spec in meta["specs"].items() if "norm" in name)


def test_param_spec_picks_the_largest_divisible_dimension():
    assert param_spec((320, 64), 4) == jax.sharding.PartitionSpec("fsdp", None)
    assert param_spec((64, 112), 4) == jax.sharding.PartitionSpec(None, "fsdp")
    assert param_spec((66, 35), 4) == jax.sharding.PartitionSpec()  # nothing divisible: replicated
    assert param_spec((64,), 4) == jax.sharding.PartitionSpec()  # small vectors stay replicated
