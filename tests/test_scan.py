"""Stacked layers (model.scan_layers) and remat compute what the unrolled model computes; HF names stay at the edges."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

import jaxlm
from hf_checkpoints import (
    VOCAB,
    assert_same_tensors,
    tiny_gemma3,
    tiny_gpt2,
    tiny_llama,
    tiny_phi3,
    tiny_qwen2,
    tiny_qwen3,
)
from jaxlm.compute import losses, sharding
from jaxlm.hf.peft import fully_trained_modules
from jaxlm.models.contract import configure, is_stacked
from jaxlm.models.execution import Execution
from jaxlm.models.lora import apply_lora, has_lora, merge_lora
from jaxlm.models.prompt_tuning import VirtualTokens, apply_prompt_tuning, prepend_virtual_tokens
from jaxlm.models.weight_map import dotted
from jaxlm.train.config import ConfigError, load_config
from jaxlm.train.engine import build_engine, trainable_filter
from jaxlm.train.inputs import prepare_model
from test_train_loss import lm_batch, reference_loss

LLAMA_TARGETS = ["q", "k", "v", "o", "gate", "up", "down"]
TARGETS = {"llama": LLAMA_TARGETS, "qwen2": LLAMA_TARGETS, "qwen3": LLAMA_TARGETS, "gemma3": LLAMA_TARGETS,
           "phi3": LLAMA_TARGETS, "gpt2": ["qkv"]}
WRITERS = {"llama": tiny_llama, "qwen2": tiny_qwen2, "qwen3": tiny_qwen3, "gpt2": tiny_gpt2,
           "gemma3": tiny_gemma3, "phi3": lambda path: tiny_phi3(path, longrope=True, partial_rotary=0.75)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for family, write in WRITERS.items():
        out[family] = str(tmp_path_factory.mktemp(family))
        write(out[family])
    return out


def model_for(folder, family, lora=0, **options):
    model = jaxlm.load_pretrained(folder)[0]
    if lora:
        apply_lora(model, TARGETS[family], lora, 8.0)
        for _, module in nnx.iter_modules(model):  # B starts at zero; make the adapters matter
            if hasattr(module, "lora_b"):
                module.lora_b.set_value(0.1 * jax.random.normal(jax.random.key(1), module.lora_b.get_value().shape))
    return configure(model, Execution(**options))


def per_layer(tree, layers: str) -> dict:
    """Flat {path: array} with stacked [layers, ...] entries split into per-layer paths."""
    out = {}
    for path, value in nnx.to_flat_state(tree):
        value = np.asarray(value.get_value() if hasattr(value, "get_value") else value)
        if path[0] == layers and path[1] == "layer":  # a scan.Stack
            out.update({(layers, i, *path[2:]): value[i] for i in range(value.shape[0])})
        else:
            out[path] = value
    return out


def jitted(fn, model):
    """fn(model, batch) under jit (eager NNX is slow), on lm_batch()."""
    graphdef, state = nnx.split(model)
    batch = {k: jnp.asarray(v) for k, v in lm_batch().items()}
    return jax.jit(lambda s, b: fn(nnx.merge(graphdef, s), b))(state, batch)


def loss_logits_and_grads(model):
    """((loss, logits), parameter gradients) on lm_batch(), one jitted program."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # rest: Gemma's per-layer constants
    batch = {k: jnp.asarray(v) for k, v in lm_batch().items()}

    def loss(p):
        m = nnx.merge(graphdef, p, rest)
        logits = m(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])
        return reference_loss(logits, batch), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@pytest.mark.parametrize("family, lora, options", [
    ("llama", 4, dict(scan_layers=True, remat="full")),
    ("llama", 0, dict(remat="dots")),
    ("gpt2", 4, dict(scan_layers=True, remat="dots")),
    ("qwen3", 4, dict(scan_layers=True, remat="full")),
])
def test_scan_and_remat_give_the_unrolled_logits_and_gradients(folders, family, lora, options):
    layers = "h" if family == "gpt2" else "layers"
    plain = model_for(folders[family], family, lora)
    other = model_for(folders[family], family, lora, **options)
    assert is_stacked(other) == options.get("scan_layers", False)
    (want, want_logits), want_grads = loss_logits_and_grads(plain)
    (got, got_logits), got_grads = loss_logits_and_grads(other)
    np.testing.assert_allclose(got_logits, want_logits, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    got_grads, want_grads = per_layer(got_grads, layers), per_layer(want_grads, layers)
    assert sorted(got_grads) == sorted(want_grads)
    for path, want_grad in want_grads.items():  # float32 summation order differs: error grows with the leaf's size
        atol = 1e-5 * max(1.0, float(np.abs(want_grad).max()))
        np.testing.assert_allclose(got_grads[path], want_grad, atol=atol, rtol=1e-5, err_msg=str(path))


# gemma3: local and global layers in one scanned layer, rematerialised; phi3: split fused projections. (Qwen2
# and Qwen3 differ from Llama by parts the scanned logits and gradients above already cover.)
@pytest.mark.parametrize("family, remat", [("gemma3", "full"), ("phi3", "none")])
def test_training_steps_with_stacked_layers_match_the_unrolled_ones(folders, family, remat):
    """A few full train steps (LoRA on every short target, chunked loss) of each Llama-architecture family."""
    runs = []
    for stacked, remat_then in (("false", "none"), ("true", remat)):
        cfg = load_config(None, [f"model.path={folders[family]}", "task=causal_lm", "train.batch_size=4",
                                 "train.seq_len=16", "train.steps=3", "train.warmup_steps=0",
                                 "train.learning_rate=1e-2", "model.lora.rank=4",
                                 f"model.lora.targets={','.join(LLAMA_TARGETS)}", f"model.scan_layers={stacked}",
                                 "train.loss_chunk_tokens=16", f"model.remat={remat_then}"])
        model = jaxlm.load_pretrained(folders[family])[0]
        prepare_model(model, cfg)
        engine = build_engine(model, cfg)
        runs.append([float(engine.step(lm_batch(seed=i))["loss"]) for i in range(3)])
    assert runs[0][-1] < runs[0][0], runs  # it learns
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3"])
def test_scanned_model_round_trips_hf_load_and_export_unchanged(folders, tmp_path, family):
    model = model_for(folders[family], family, scan_layers=True)
    jaxlm.export_pretrained(model, tmp_path)
    assert_same_tensors(folders[family], tmp_path)


def test_lora_merges_into_stacked_layers(folders):
    """Generation after LoRA training merges the adapters into the (still stacked) kernels."""
    stacked = model_for(folders["llama"], "llama", lora=4, scan_layers=True)
    merged = merge_lora(stacked)
    assert is_stacked(merged) and not has_lora(merged)
    forward = lambda m, b: m(b["input_ids"], positions=b["positions"], segment_ids=b["segment_ids"])  # noqa: E731
    np.testing.assert_allclose(jitted(forward, merged), jitted(forward, stacked), atol=1e-5)


def test_kv_cache_decoding_runs_scanned_layers(folders):
    plain, stacked = model_for(folders["llama"], "llama"), model_for(folders["llama"], "llama", scan_layers=True)
    ids = jnp.asarray(np.random.RandomState(3).randint(3, VOCAB, (2, 9)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
    graphdef, state = nnx.split(stacked)
    decode = jax.jit(lambda s, i, p, c: nnx.merge(graphdef, s)(i, positions=p, cache=c))
    cache = stacked.init_cache(batch=2, slots=12)
    prefill, cache = decode(state, ids[:, :6], positions[:, :6], cache)
    steps = [prefill]
    for t in range(6, 9):
        logits, cache = decode(state, ids[:, t:t + 1], positions[:, t:t + 1], cache)
        steps.append(logits)
    full = jitted(lambda m, b: m(ids), plain)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_fsdp_never_splits_the_layer_axis(folders):
    model = model_for(folders["llama"], "llama", scan_layers=True)
    specs = sharding.state_shardings(nnx.state(model, nnx.Param), AbstractMesh((1, 2), ("data", "fsdp")))
    kernel = specs["layers"]["layer"]["mlp"]["up_proj"]["kernel"].get_value()  # [2 layers, 64, 112]: 2 is divisible too
    assert kernel.spec == P(None, None, "fsdp")
    assert sharding.param_spec((64, 16, 8), 4, keep=0) == P(None, "fsdp", None)


def test_prompt_tuning_with_stacked_layers_and_chunked_loss_matches_the_plain_loss(folders):
    """The virtual tokens' outputs are dropped before the chunked loss; stacking changes nothing."""
    batch = {k: jnp.asarray(v) for k, v in lm_batch().items()}
    batch["segment_ids"] = jnp.ones_like(batch["input_ids"])  # prompt tuning: one document per row
    batch["positions"] = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (4, 16))

    def value_and_grad(scan_layers, loss):
        model = jaxlm.load_pretrained(folders["llama"])[0]
        apply_prompt_tuning(model, 3, seed=1)
        configure(model, Execution(scan_layers=scan_layers))
        graphdef, virtual, rest = nnx.split(model, VirtualTokens, ...)
        return jax.jit(jax.value_and_grad(lambda v: loss(nnx.merge(graphdef, v, rest))))(virtual)

    def plain(model):  # whole-batch logits, the virtual positions cut off by hand
        ids, positions, segments, n = prepend_virtual_tokens(model, batch["input_ids"], batch["positions"],
                                                             batch["segment_ids"])
        return reference_loss(model(ids, positions=positions, segment_ids=segments)[:, n:], batch)

    want, want_grads = value_and_grad(False, plain)
    for packed in (True, False):  # segment ids, or per-row lengths (the flash-attention path)
        chunked = lambda m, packed=packed: losses.loss_terms("causal_lm", m, batch, chunk_tokens=24,  # noqa: E731
                                                             packed=packed)[0]
        got, got_grads = value_and_grad(True, chunked)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        chex.assert_trees_all_close(got_grads, want_grads, atol=1e-5, rtol=1e-5)


def test_train_only_means_per_layer_names_on_stacked_layers(folders):
    model = model_for(folders["llama"], "llama", scan_layers=True)

    def trained(pattern):
        cfg = load_config(None, ["task=causal_lm", "model.lora.rank=0", f"model.train_only=['{pattern}']"])
        return trainable_filter(cfg)

    every_mlp = trained(r"layers\.\d+\.mlp\.")
    assert {dotted(p) for p, _ in nnx.to_flat_state(nnx.state(model, every_mlp))} == {
        f"layers.layer.mlp.{name}.kernel" for name in ("gate_proj", "up_proj", "down_proj")}
    assert fully_trained_modules(model, every_mlp) == tuple(sorted(
        f"model.layers.{i}.mlp.{name}" for i in (0, 1) for name in ("gate_proj", "up_proj", "down_proj")))
    with pytest.raises(ConfigError, match="some layers"):  # one layer of a stacked parameter cannot train alone
        nnx.state(model, trained(r"layers\.1\.mlp\."))
