"""Mixture-of-experts families (Qwen3-MoE, Mixtral): logits, the load-balancing loss and greedy decoding
equal transformers'; the grouped (ragged_dot) experts equal the dense reference; export round trip; training."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxlm
from hf_checkpoints import assert_same_tensors, left_padded_batch, tiny_mixtral, tiny_qwen3_moe
from jaxlm.models.llama_moe import expert_load, router_aux_loss
from jaxlm.models.lora import LoRAExperts
from jaxlm.models.moe import SparseMoE, grouped_matmul
from test_lora import _as_if_trained
from train_helpers import with_devices

# Qwen3-MoE with a dense layer and unnormalised top-k weights; Mixtral all sparse, renormalised.
WRITERS = {
    "qwen3_moe": (tiny_qwen3_moe, dict(mlp_only_layers=[1], norm_topk_prob=False)),
    "mixtral": (tiny_mixtral, {}),
}


@pytest.fixture(scope="module", params=sorted(WRITERS))
def family(request, tmp_path_factory):
    write, options = WRITERS[request.param]
    path = tmp_path_factory.mktemp(request.param)
    reference = write(path, **options)
    model, _ = jaxlm.load_pretrained(path)
    return request.param, path, reference, model


def test_logits_load_balancing_loss_z_loss_and_expert_load_match_transformers(family):
    _, _, reference, model = family
    ids, mask, positions = left_padded_batch(seed=7, batch=4, length=13)
    with torch.no_grad():
        ref = reference(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                        position_ids=torch.tensor(positions, dtype=torch.long), output_router_logits=True)
    logits = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    assert np.abs(logits[real] - ref.logits.numpy()[real]).max() < 1e-4
    # The padding rows are left out of the loss, as transformers does with an attention mask.
    want = reference.config.router_aux_loss_coef * float(ref.aux_loss)
    np.testing.assert_allclose(float(router_aux_loss(model)), want, rtol=1e-5)
    # The z-loss, by hand from transformers' router logits: mean over the real rows of every sparse layer
    # of logsumexp^2; training adds it times router_z_loss_coef (a config.json key, model.config_overrides).
    rows = [torch.logsumexp(layer, dim=-1).numpy()[real.reshape(-1)] for layer in ref.router_logits]
    z_loss = float(np.mean(np.concatenate(rows) ** 2))
    np.testing.assert_allclose(float(model.router_z_loss.get_value()), z_loss, rtol=1e-5)
    # Each expert's share of its layer's choices (top k of every real token), by hand from the same logits.
    k = reference.config.num_experts_per_tok
    for logits_of_layer, shares in zip(ref.router_logits, np.asarray(expert_load(model)), strict=True):
        chosen = torch.topk(logits_of_layer, k, dim=-1).indices.numpy()[real.reshape(-1)]
        want_shares = np.bincount(chosen.reshape(-1), minlength=shares.shape[0]) / chosen.size
        np.testing.assert_allclose(shares, want_shares, rtol=1e-6)
    weighted = nnx.clone(model)
    weighted.config = dataclasses.replace(model.config, router_z_loss_coef=0.01)
    np.testing.assert_allclose(float(router_aux_loss(weighted)), want + 0.01 * z_loss, rtol=1e-5)
    # Every expert of every sparse layer got tokens, so the comparison covered all of them.
    for logits_of_layer in ref.router_logits:
        chosen = torch.topk(logits_of_layer, reference.config.num_experts_per_tok, dim=-1).indices
        assert set(chosen.flatten().tolist()) == set(range(logits_of_layer.shape[-1]))


def test_grouped_experts_equal_the_dense_reference_and_their_gradients_too_with_lora_or_without():
    moe = SparseMoE(16, 24, num_experts=5, top_k=2, normalize=True, names=("w1", "w3", "w2"), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (37, 16))
    probabilities = jax.nn.softmax(x @ jax.random.normal(jax.random.key(2), (16, 5)), axis=-1)
    weights, experts = jax.lax.top_k(probabilities, 2)
    graphdef, state = nnx.split(moe.experts)

    def loss(state, how):
        return jnp.sum(getattr(nnx.merge(graphdef, state), how)(x, experts, weights) ** 2)

    grouped, grouped_grads = jax.value_and_grad(loss)(state, "grouped")
    dense, dense_grads = jax.value_and_grad(loss)(state, "dense")
    np.testing.assert_allclose(grouped, dense, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grouped_grads, dense_grads)
    # LoRA on the experts: the grouped low-rank path equals the dense form on the merged kernels.
    adapted = LoRAExperts(moe.experts, ("w1", "w2"), rank=3, alpha=6.0, rngs=nnx.Rngs(3))
    _as_if_trained(adapted)
    graphdef, state = nnx.split(adapted)

    @jax.jit  # one compilation, not an eager one per small op
    def both(state):
        module = nnx.merge(graphdef, state)
        return module.grouped(x, experts, weights), module.dense(x, experts, weights)

    lora_grouped, lora_dense = both(state)
    np.testing.assert_allclose(lora_grouped, lora_dense, rtol=1e-4, atol=1e-5)
    assert float(jnp.sum(lora_dense**2)) > 2 * float(dense)  # the adapters change the output


def test_grouped_matmul_skips_padding_rows_and_unused_tiles_with_the_per_row_products_and_gradients():
    """A buffer of 40 rows of which the sizes count 21 (the rest padding, as expert parallelism receives):
    tiles of 8, 8 of them, 4 used (groups of 9, 0 and 12 rows); the counted rows come out times their group's
    kernel, the padding zero, and the gradients are the per-row products' (the skipped tiles give none)."""
    kernels = jax.random.normal(jax.random.key(0), (3, 8, 5))
    rows = jax.random.normal(jax.random.key(1), (40, 8))
    sizes = jnp.array([9, 0, 12], jnp.int32)
    group = np.repeat(np.arange(3), np.asarray(sizes))

    def per_row(rows, kernels):
        return jnp.concatenate([jnp.einsum("mi,mio->mo", rows[:21], kernels[group]), jnp.zeros((19, 5))])

    def loss(how):
        return jax.jit(jax.value_and_grad(lambda r, k: jnp.sum(jnp.sin(how(r, k))), argnums=(0, 1)))

    want, want_grads = loss(per_row)(rows, kernels)
    got, got_grads = loss(lambda r, k: grouped_matmul(r, k, sizes))(rows, kernels)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got_grads[0][21:], 0)


def test_greedy_generation_matches_transformers(family):
    from test_sampling_parity import random_prompts, transformers_generate

    _, _, reference, model = family
    prompts = random_prompts([7, 2, 5])
    torch.set_num_threads(1)
    want = transformers_generate(reference, prompts, max_new_tokens=8)
    assert jaxlm.generate(model, None, prompts, max_new_tokens=8).token_ids == want


def test_export_round_trip_writes_each_expert_under_its_hf_name(family, tmp_path):
    _, path, _, model = family
    jaxlm.export_pretrained(model, tmp_path)
    assert_same_tensors(path, tmp_path)


@pytest.mark.parametrize("family", ["mixtral"], indirect=True)  # the loss reads the router loss, not the family
def test_the_training_loss_adds_the_router_loss_once_per_token(family):
    from jaxlm.compute.losses import loss_terms
    from test_train_loss import lm_batch

    _, _, _, model = family
    batch = {k: jnp.asarray(v) for k, v in lm_batch().items()}
    terms = loss_terms("causal_lm", model, batch)
    balance = router_aux_loss(model)
    scored = loss_terms("causal_lm", model, batch, count_correct=True)  # evaluation: the LM loss alone
    np.testing.assert_allclose(terms.loss_sum, scored.loss_sum + balance * terms.count, rtol=1e-6)
    assert float(balance) > 0


def test_scanned_rematerialised_mixtral_gives_the_unrolled_loss_and_gradients_and_exports_unchanged(tmp_path):
    """The routers' statistics ride through the scanned layers beside the hidden states (scan.run's carry)."""
    from jaxlm.compute.losses import loss_terms
    from jaxlm.models.contract import configure
    from jaxlm.models.execution import Execution
    from test_train_loss import lm_batch

    tiny_mixtral(tmp_path / "src")
    batch = {k: jnp.asarray(v) for k, v in lm_batch().items()}

    def loss_and_grads(model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params, rest):  # the model merged inside, as the train step does
            terms = loss_terms("causal_lm", nnx.merge(graphdef, params, rest), batch, chunk_tokens=16)
            return terms.loss_sum / terms.count

        value, grads = jax.jit(jax.value_and_grad(loss))(params, rest)
        return value, grads["embed_tokens"]["embedding"].get_value(), grads["norm"]["weight"].get_value()

    plain = jaxlm.load_pretrained(tmp_path / "src")[0]
    stacked = configure(jaxlm.load_pretrained(tmp_path / "src")[0], Execution(remat="full", scan_layers=True))
    for want, got in zip(loss_and_grads(plain), loss_and_grads(stacked), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    jaxlm.export_pretrained(stacked, tmp_path / "out")
    assert_same_tensors(tmp_path / "src", tmp_path / "out")


def test_lora_on_attention_and_experts_loads_in_peft_with_the_same_logits_never_on_the_router(
        family, tmp_path):
    """The experts' pairs become PEFT's on transformers' 3-d gate_up_proj / down_proj (`target_parameters`),
    gate and up fused as Phi-3's are (tests/test_lora.py). Qwen3-MoE's here has a dense layer, which PEFT cannot
    adapt (its gate/up/down_proj targets mean the experts' there): refused."""
    import copy

    from peft import PeftModel

    from jaxlm.hf.peft import save_peft_adapter
    from jaxlm.models.lora import apply_lora, lora_experts, lora_modules
    from test_lora import IDS

    name, path, reference, _ = family
    model, _ = jaxlm.load_pretrained(path)
    apply_lora(model, ["q", "k", "v", "o", "gate", "up", "down"], 4, 8.0)
    adapted = {".".join(map(str, p)) for p, _ in lora_modules(model)}
    assert adapted and not any(p.endswith(".gate") for p in adapted), adapted
    assert all(m.adapted == m.names for _, m in lora_experts(model)) and lora_experts(model)
    if name == "qwen3_moe":  # PEFT reads the dense layer 1's gate/up/down_proj targets as the experts'
        with pytest.raises(ValueError, match=r"model.layers.1.mlp.down_proj \(a dense layer's MLP\) has no PEFT"):
            save_peft_adapter(model, str(tmp_path / "adapter"))
        return
    _as_if_trained(model)
    save_peft_adapter(model, str(tmp_path / "adapter"))
    with torch.no_grad():
        ids = torch.tensor(IDS, dtype=torch.long)
        without = reference(ids).logits.numpy()
        via_peft = PeftModel.from_pretrained(copy.deepcopy(reference), str(tmp_path / "adapter")).eval()(ids).logits
    graphdef, state = nnx.split(model)  # compiled: a mixture's many small ops are slow one by one
    ours = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))(state, IDS)
    assert np.abs(via_peft.numpy() - without).max() > 1e-3, "the adapter must change the logits"
    np.testing.assert_allclose(via_peft.numpy(), np.asarray(ours), atol=1e-4)


@pytest.mark.parametrize("family", ["qwen3_moe"], indirect=True)  # the step and the metrics know no family
def test_a_train_step_reports_the_expert_load_which_metrics_jsonl_and_experts_png_show(family, tmp_path):
    """A row per sparse layer (Qwen3-MoE's layer 1 is dense), accumulated over micro-batches (grad_accum=2)
    as the loss is: the token-weighted mean of their shares."""
    from jaxlm.train.metrics import expert_load as load_metrics
    from jaxlm.train.metrics import plot_experts
    from test_train_engine import engine_for, lm_batch

    _, path, _, model = family
    _, engine = engine_for(path, "train.grad_accum=2")
    load = np.asarray(engine.step(lm_batch())["expert_load"], np.float64)
    assert load.shape == (1, model.config.num_experts)
    np.testing.assert_allclose(load.sum(-1), 1.0, rtol=1e-5)
    row = load_metrics({"step": 1, "expert_load": load})
    assert row["expert_share_max"] == load.max(-1).round(5).tolist()
    assert row["experts/min_share"] == float(load.min()) and len(row["expert_load"]) == load.shape[0]
    assert plot_experts([row, {"step": 2, "loss": 1.0}], str(tmp_path / "experts.png")) is not None
    assert (tmp_path / "experts.png").stat().st_size > 0
    assert plot_experts([{"step": 1, "loss": 1.0}], str(tmp_path / "none.png")) is None


EXPERT_PARALLEL = r"""
import json, sys
import numpy as np, jax
from flax import nnx
import jaxlm
from jaxlm.compute import sharding
from jaxlm.compute.losses import loss_terms
from jaxlm.models.contract import configure
from jaxlm.models.execution import Execution
from jaxlm.models.lora import apply_lora
from jaxlm.train.config import load_config
from jaxlm.train.engine import lower_train_step
from jaxlm.train.inputs import prepare_model
sys.path.insert(0, {tests!r})
from test_train_loss import lm_batch

def model(scanned):
  loaded = jaxlm.load_pretrained(sys.argv[1])[0]
  apply_lora(loaded, ["gate"], 4, 8.0)  # on the experts (w1): their pairs are split over the experts too
  for _, pair in nnx.to_flat_state(nnx.state(loaded, nnx.LoRAParam)):  # B starts at zero: as if trained
    pair.set_value(pair.get_value() + 0.05)
  return configure(loaded, Execution(expert_axis="expert", remat="full" if scanned else "none", scan_layers=scanned))

def run(mesh_shape, scanned=False):
  devices = np.array(jax.devices()[:int(np.prod(mesh_shape))]).reshape(mesh_shape)
  mesh = jax.sharding.Mesh(devices, ("data", "fsdp", "expert"))
  graphdef, params = nnx.split(model(scanned))
  placed = sharding.place(params, sharding.state_shardings(params, mesh))
  batch = jax.device_put(lm_batch(), sharding.batch_sharding(mesh, accumulated=False))
  def loss(p, b):
    terms = loss_terms("causal_lm", nnx.merge(graphdef, p), b)
    return terms.loss_sum / terms.count

  step = jax.jit(sharding.traced_under(mesh, jax.value_and_grad(loss))).lower(placed, batch).compile()
  value, grads = step(placed, batch)
  def layer(tree, i):  # stacked layers: the i-th's slice, as unrolled
    return jax.tree.map(lambda x: x[i], tree["layers"]["layer"]) if scanned else tree["layers"][i]

  w1 = (placed["layers"]["layer"] if scanned else placed["layers"][0])["block_sparse_moe"]["experts"]["w1"]
  experts = layer(grads, 0)["block_sparse_moe"]["experts"]
  gathered = [line for line in step.as_text().splitlines() if "all-gather(" in line]
  return {{"loss": float(value), "spec": str(w1.get_value().sharding.spec),
          "w1_grad": np.asarray(experts["w1"].get_value()).tolist(),
          "lora_grad": np.asarray(experts["w1_lora_a"].get_value()).tolist(),
          "router_grad": np.asarray(layer(grads, 1)["block_sparse_moe"]["gate"]["kernel"].get_value()).tolist(),
          "all_to_all": step.as_text().count("all-to-all("), "gathered": gathered}}

runs = {{"one": run((1, 1, 1)), "expert4": run((1, 1, 4)), "expert2_fsdp2": run((1, 2, 2), scanned=True)}}
# The trainer's own step: mesh.expert > 1 sets the model's expert axis, and the step is traced under its mesh.
cfg = load_config(None, [f"model.path={{sys.argv[1]}}", "task=causal_lm", "train.batch_size=4", "train.seq_len=16",
                         "mesh.expert=4"])
loaded = jaxlm.load_pretrained(sys.argv[1])[0]
runs["trainer_all_to_all"] = lower_train_step(prepare_model(loaded, cfg), cfg).as_text().count("all_to_all")
json.dump(runs, sys.stdout)
"""


@pytest.mark.parametrize("family", ["mixtral"], indirect=True)
def test_experts_split_over_mesh_expert_exchange_tokens_all_to_all_with_the_one_device_loss_and_gradients(family):
    """4 fake CPU devices (a fresh process: the device count is fixed when JAX starts), LoRA on the experts:
    mesh.expert=4 puts one of each layer's 4 experts on each device (and a quarter of the batch);
    mesh.expert=2 x mesh.fsdp=2 two experts per device pair, each split again over fsdp, here with the layers
    stacked and rematerialised. The training loss (the router's load-balancing term included) and its
    gradients (an expert's, its adapter's, the router's) are the one-device ones, and the compiled step
    sends the tokens to the experts all-to-all instead of gathering every expert on every device (GSPMD's
    way: an all-gather of f32[4,64,48] per projection)."""
    import json
    import os
    import re
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": with_devices(4), "JAX_PLATFORMS": "cpu"}
    script = EXPERT_PARALLEL.format(tests=os.path.dirname(__file__))
    proc = subprocess.run([sys.executable, "-c", script, str(family[1])], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout)
    assert runs["expert4"]["spec"] == "P('expert', None, None)"
    assert runs["expert2_fsdp2"]["spec"] == "P(None, 'expert', 'fsdp', None)"  # behind the layers' axis
    for name in ("expert4", "expert2_fsdp2"):
        np.testing.assert_allclose(runs[name]["loss"], runs["one"]["loss"], rtol=1e-6)
        for grad in ("w1_grad", "lora_grad", "router_grad"):
            np.testing.assert_allclose(runs[name][grad], runs["one"][grad], rtol=1e-4, atol=1e-7, err_msg=name)
        # forward and backward, both ways, in each sparse layer (the scanned ones: once, in the scan's body)
        assert runs[name]["all_to_all"] >= 4, name
        whole_experts = [line for line in runs[name]["gathered"] if re.search(r"f32\[(\d+,)*4,(64,48|48,64)\]", line)]
        assert not whole_experts, whole_experts
    assert runs["one"]["all_to_all"] == 0
    assert runs["trainer_all_to_all"] >= 8


def test_expert_parallelism_composes_with_fsdp_and_never_splits_the_layer_axis():
    from jax.sharding import PartitionSpec as P

    from jaxlm.compute.sharding import param_spec

    assert param_spec((4, 64, 48), 2, expert=2, expert_dim=0) == P("expert", "fsdp", None)
    assert param_spec((2, 4, 64, 48), 2, keep=0, expert=4, expert_dim=1) == P(None, "expert", "fsdp", None)
    assert param_spec((4, 64, 48), 1, expert=1, expert_dim=0) == P()
