"""The jitted train step: what trains, how the optimizer behaves, accumulation, precision, NaN guard."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlm
from jaxlm.compute import losses
from jaxlm.models.lora import LoRALinear
from jaxlm.train.config import load_config
from jaxlm.train.engine import build_engine
from jaxlm.train.inputs import load_teacher, prepare_model
from jaxlm.train.state import decay_mask, make_schedule
from train_helpers import write_tiny_llama


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("llama") / "model")


def lm_batch(seed=0, batch=4, seq=16, vocab=320):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, size=(batch, seq + 1)).astype(np.int32)
    segments = np.ones((batch, seq), np.int32)
    segments[:, seq // 2:] = 2  # two packed documents per row
    positions = np.concatenate([np.arange(seq // 2), np.arange(seq - seq // 2)])[None].repeat(batch, 0)
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": np.ones((batch, seq), np.int32),
            "segment_ids": segments, "positions": positions.astype(np.int32)}


def engine_for(llama_dir, *overrides, lora=0):
    cfg = load_config(None, [f"model.path={llama_dir}", "task=causal_lm", "train.batch_size=4", "train.seq_len=16",
                             "train.steps=10", "train.warmup_steps=0", "train.learning_rate=1e-2",
                             f"model.lora.rank={lora}", "model.lora.targets=q,v", *overrides])
    model, _ = jaxlm.load_pretrained(llama_dir)
    prepare_model(model, cfg)  # LoRA, attention kernel, remat, stacked layers: as the trainer does
    return model, build_engine(model, cfg)


def test_lora_trains_only_the_adapters_and_keeps_the_base_frozen(llama_dir):
    model, engine = engine_for(llama_dir, lora=4)
    trainable = nnx.to_flat_state(engine.state.params)
    assert trainable and all(isinstance(v, nnx.LoRAParam) for _, v in trainable)
    assert {p[-1] for p, _ in trainable} == {"lora_a", "lora_b"}
    # Adam moments exist only for the adapters: the optimizer state is as small as the adapters.
    adapter_size = sum(v.get_value().size for _, v in trainable)
    moments = [x for x in jax.tree.leaves(engine.state.opt_state) if x.ndim > 0]
    assert sum(x.size for x in moments) == 2 * adapter_size
    frozen_before = jax.tree.map(np.array, engine.frozen)
    for step in range(3):
        engine.step(lm_batch(step))
    chex.assert_trees_all_equal(jax.tree.map(np.array, engine.frozen), frozen_before)
    lora_b = [v.get_value() for p, v in nnx.to_flat_state(engine.state.params) if p[-1] == "lora_b"]
    assert all(np.abs(b).max() > 0 for b in lora_b), "B starts at zero and must move"


def test_full_fine_tuning_trains_every_parameter(llama_dir):
    model, engine = engine_for(llama_dir)
    assert not jax.tree.leaves(engine.frozen)
    before = jax.tree.map(np.array, engine.state.params)
    engine.step(lm_batch())
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, jax.tree.map(np.array, engine.state.params))
    assert all(jax.tree.leaves(changed))


def test_compiling_on_a_cpu_returns_the_freed_heap_before_the_first_step(llama_dir, monkeypatch):
    """The peak comes with the first step: what loading and compiling freed must be back with the OS by then."""
    from jaxlm import cpu_flags

    events = []
    monkeypatch.setattr(cpu_flags, "return_freed_memory", lambda: events.append("returned") or True)
    model, engine = engine_for(llama_dir)
    assert not events
    engine.compile(lm_batch())
    assert events == ["returned"]
    engine.step(lm_batch())
    assert events == ["returned"]


def test_weight_decay_skips_norms_and_biases():
    params = {"norm": {"weight": jnp.ones(4)}, "proj": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
              "embed": {"embedding": jnp.ones((8, 4))}, "ln": {"scale": jnp.ones(4)}}
    mask = decay_mask(params)
    assert mask == {"norm": {"weight": False}, "proj": {"kernel": True, "bias": False},
                    "embed": {"embedding": True}, "ln": {"scale": False}}


@pytest.mark.parametrize("schedule, end", [("cosine", 1e-4), ("linear", 1e-4), ("constant", 1e-3)])
def test_learning_rate_warms_up_linearly_then_follows_the_schedule(schedule, end):
    cfg = load_config(None, ["train.steps=110", "train.warmup_steps=10", "train.learning_rate=1e-3",
                             f"train.schedule={schedule}"]).train
    lr = make_schedule(cfg)
    np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 5e-4, 1e-3], rtol=1e-5)
    np.testing.assert_allclose(lr(110), end, rtol=1e-4)
    if schedule == "cosine":
        np.testing.assert_allclose(lr(60), (1e-3 + 1e-4) / 2, rtol=1e-4)


def test_learning_rate_is_reported_by_each_step(llama_dir):
    _, engine = engine_for(llama_dir, "train.warmup_steps=4")
    lrs = [float(engine.step(lm_batch(i))["lr"]) for i in range(3)]
    np.testing.assert_allclose(lrs, [0.0, 2.5e-3, 5e-3], rtol=1e-5)


def test_gradient_accumulation_matches_one_big_batch(llama_dir):
    results = []
    for accum in (1, 2, 4):
        _, engine = engine_for(llama_dir, f"train.grad_accum={accum}")
        batch = lm_batch()
        batch["loss_mask"][1, :5] = 0  # uneven token counts per micro-batch: the mean must still be exact
        losses = [float(engine.step(batch)["loss"]) for _ in range(2)]
        results.append((losses, jax.tree.map(np.array, engine.state.params)))
    for losses, params in results[1:]:
        np.testing.assert_allclose(losses, results[0][0], rtol=1e-5)
        # Adam turns tiny float differences in near-zero gradients into lr-sized steps; compare at 1% of lr.
        chex.assert_trees_all_close(params, results[0][1], atol=1e-4, rtol=1e-4)


def test_bfloat16_computes_in_bf16_with_float32_master_weights(llama_dir):
    _, f32 = engine_for(llama_dir)
    _, bf16 = engine_for(llama_dir, "train.compute_dtype=bfloat16")
    loss32, loss16 = float(f32.step(lm_batch())["loss"]), float(bf16.step(lm_batch())["loss"])
    assert loss16 != loss32, "bf16 compute must actually change the arithmetic"
    assert abs(loss16 - loss32) < 0.05 * loss32
    dtypes = {x.dtype for x in jax.tree.leaves((bf16.state.params, bf16.state.opt_state)) if x.ndim > 0}
    assert dtypes == {jnp.dtype(jnp.float32)}


def matmul_operand_types(hlo_text: str) -> list[tuple[str, str]]:
    """The precision of the two operands of every dot_general in lowered StableHLO text: the element
    types, or the dot algorithm's when one is set (jax's attention backward converts float32 cotangents
    to bf16 for a bf16 x bf16 -> f32 matmul)."""
    tensor = r"tensor<(?:\d+x)*([a-z]\w*)>"
    found = []
    for line in hlo_text.splitlines():
        if "stablehlo.dot_general" not in line:
            continue
        algorithm = re.search(r"lhs_precision_type = (\w+), rhs_precision_type = (\w+)", line)
        types = re.search(rf": \({tensor}, {tensor}\)", line)
        found.append(algorithm.groups() if algorithm else types.groups())
    assert found, "no dot_general found: the HLO text format changed?"
    return found


@pytest.mark.parametrize("lora", [0, 4])
def test_bfloat16_step_has_no_float32_matmul(llama_dir, lora):
    """Every projection, attention and LM-head matmul (forward and backward, chunked loss) runs on bf16 operands,
    and into float32: XLA:CPU has no dot with a bf16 result, it would convert both operands to float32 and run at
    float32 speed (models.layers.matmul). The only bf16 results left are attention's probabilities x values
    inside jax.nn.dot_product_attention (3 a layer with their gradients)."""
    model, engine = engine_for(llama_dir, "train.compute_dtype=bfloat16", "train.loss_chunk_tokens=32",
                               "model.lora.targets=q,v,o,down", lora=lora)  # q and v share x @ [A_q | A_v]
    lowered = engine.train_step.lower(engine.state, engine.frozen, engine.rest, engine.put(lm_batch()),
                                      engine.reference, engine.teacher)
    text = lowered.as_text()
    operands = matmul_operand_types(text)
    float32 = [o for o in operands if "f32" in o]  # (lhs type, rhs type) pairs
    assert not float32, f"{len(float32)} of {len(operands)} matmuls have float32 operands"
    results = re.findall(r"stablehlo\.dot_general .*-> tensor<(?:\d+x)*([a-z]\w*)>", text)
    assert len(results) == len(operands)
    assert sum(r == "bf16" for r in results) <= 3 * model.config.num_hidden_layers, results
    # ... and XLA keeps them bf16: the compiled step's float32 dots are attention's alone (jax's einsums BTNH/BNTS;
    # a kernel gradient's operand behind an optimisation barrier once came out converted to float32)
    dots, upcast = 0, []
    for computation in re.split(r"\n(?=%|ENTRY)", lowered.compile().as_text()):
        dot = re.search(r"ROOT %\S+ = \w+\[[\d,]*\]\S* dot\(%(\S+), %(\S+)\).*op_name=\"([^\"]*)\"", computation)
        types = dict(re.findall(r"%(\S+) = (\w+)\[[\d,]*\]\S* parameter", computation))
        dots += bool(dot)
        if dot and "f32" in (types.get(dot[1]), types.get(dot[2])) and not re.search("BTNH|BNTS", dot[3]):
            upcast.append(dot[3])
    assert dots >= len(operands) // 2, "the compiled step's dots were not found: the HLO text format changed?"
    assert not upcast, upcast


def test_scanned_rematerialised_lora_steps_match_the_unrolled_ones(llama_dir):
    """The whole step (LoRA fan-out, stacked layers, remat, chunked loss) against the plain one."""
    runs, targets = [], "model.lora.targets=q,k,v,o,gate,up,down"  # q/k/v and gate/up share their input
    for options in ([], ["model.scan_layers=true", "model.remat=full", "train.loss_chunk_tokens=16"]):
        _, engine = engine_for(llama_dir, targets, *options, lora=4)
        runs.append([float(engine.step(lm_batch(i))["loss"]) for i in range(3)])
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5)


def test_a_non_finite_loss_skips_the_update_and_records_the_step(llama_dir):
    _, engine = engine_for(llama_dir)
    engine.step(lm_batch(0))
    good = jax.tree.map(np.array, engine.state.params)
    flat = nnx.to_flat_state(engine.state.params)
    leaf_path = flat[0][0]  # an inf weight makes the next loss non-finite
    engine.state = engine.state.replace(params=nnx.from_flat_state(
        [(p, v.replace(v.get_value() * np.inf) if p == leaf_path else v) for p, v in flat]))
    metrics = engine.step(lm_batch(1))
    assert not np.isfinite(float(metrics["loss"]))
    assert int(engine.state.bad_step) == 1 and int(engine.state.step) == 2
    after = jax.tree.map(np.array, engine.state.params)
    rest = [(p, v) for p, v in nnx.to_flat_state(after) if p != leaf_path]
    expected = {p: v for p, v in nnx.to_flat_state(good)}
    for p, v in rest:
        np.testing.assert_array_equal(v.get_value(), expected[p].get_value())


def test_lora_layers_are_swapped_in_place_for_the_named_targets(llama_dir):
    model, _ = jaxlm.load_pretrained(llama_dir)
    jaxlm.models.lora.apply_lora(model, ["q", "v"], 4, 8.0)
    wrapped = [".".join(map(str, p)) for p, m in nnx.iter_modules(model) if isinstance(m, LoRALinear)]
    assert wrapped == [f"layers.{i}.self_attn.{n}" for i in range(2) for n in ("q_proj", "v_proj")]


def test_kl_to_base_and_distillation_from_the_starting_model_start_at_zero_and_grow(llama_dir):
    """train.kl_to_base compares with a frozen copy of the starting weights, train.distill (here with the starting
    model as its own teacher, alpha 0.5) with the teacher held beside them: both KLs are 0 before the first update
    (up to rounding: the differentiated forward pass is fused differently), so the first loss is half the
    cross-entropy; then both grow. (With alpha=1 the weights would still move: AdamW decays them, and Adam
    scales a rounding-sized gradient up to a full step.)"""
    cfg = load_config(None, [f"model.path={llama_dir}", "task=causal_lm", "train.batch_size=4", "train.seq_len=16",
                             "train.warmup_steps=0", "train.learning_rate=1e-2", "model.lora.rank=0",
                             "train.kl_to_base=0.5", f"train.distill.teacher={llama_dir}", "train.distill.alpha=0.5",
                             "train.distill.temperature=2", "train.loss_chunk_tokens=24"])
    model, tokenizer = jaxlm.load_pretrained(llama_dir)
    prepare_model(model, cfg)
    engine = build_engine(model, cfg, teacher=load_teacher(cfg, model, tokenizer))
    assert engine.reference is not None and engine.teacher is not None  # full fine-tuning holds both
    batch = lm_batch(0)
    cross_entropy = jax.jit(lambda m: losses.loss_terms("causal_lm", m, {k: jnp.asarray(v) for k, v in batch.items()}))(
        model)
    first, second = (jax.device_get(engine.step(b)) for b in (batch, lm_batch(1)))
    assert abs(first["kl_to_base"]) < 1e-6 and abs(first["distill_kl"]) < 1e-6
    np.testing.assert_allclose(first["loss"], 0.5 * cross_entropy.loss_sum / cross_entropy.count, rtol=1e-5)
    assert second["kl_to_base"] > 1e-4 and second["distill_kl"] > 1e-4
