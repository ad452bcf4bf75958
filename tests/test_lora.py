"""LoRA: merging is exact, and the PEFT-format adapter loads in `peft` with the merged export's logits."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx

import jaxlm
from hf_checkpoints import tiny_gemma3, tiny_phi3, tiny_qwen2, tiny_qwen3
from jaxlm.hf.peft import save_peft_adapter
from jaxlm.models.lora import apply_lora, has_lora, merge_lora
from train_helpers import write_tiny_llama

IDS = np.array([[5, 17, 33, 9, 60, 2, 7, 8]], np.int32)


@pytest.fixture(scope="module")
def trained_lora(tmp_path_factory):
    """A tiny Llama with adapters on q, v and down whose B factors are non-zero (as after training)."""
    base = write_tiny_llama(tmp_path_factory.mktemp("lora") / "base")
    model, tokenizer = jaxlm.load_pretrained(base)
    apply_lora(model, ["q", "v", "down"], rank=4, alpha=8.0, seed=1)
    _as_if_trained(model)
    return base, model, tokenizer


def _as_if_trained(model):
    rng = np.random.RandomState(0)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        var.set_value(var.get_value() + 0.05 * rng.standard_normal(var.get_value().shape).astype(np.float32))


def test_merged_model_computes_what_the_adapted_model_computes(trained_lora):
    _, model, _ = trained_lora
    merged = merge_lora(model)
    assert has_lora(model) and not has_lora(merged)
    np.testing.assert_allclose(np.asarray(merged(IDS)), np.asarray(model(IDS)), atol=1e-5)


def test_targets_accept_regexes_over_dotted_paths(trained_lora):
    base, _, _ = trained_lora
    model, _ = jaxlm.load_pretrained(base)
    assert apply_lora(model, [r"layers\.1\.mlp\..*_proj"], rank=2, alpha=2.0) == 3


def test_unknown_targets_fail_with_the_names_given(trained_lora):
    base, _, _ = trained_lora
    model, _ = jaxlm.load_pretrained(base)
    with pytest.raises(ValueError, match=r"model.lora.targets \['qq'\] match no linear layer"):
        apply_lora(model, ["qq"], rank=2, alpha=2.0)


def test_peft_loads_the_adapter_onto_the_hf_base_with_the_merged_logits(trained_lora, tmp_path):
    from peft import PeftModel

    base, model, tokenizer = trained_lora
    save_peft_adapter(model, str(tmp_path / "adapter"), base_model=base)
    jaxlm.export_pretrained(model, tmp_path / "merged", tokenizer)
    peft_model = PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base),
                                           str(tmp_path / "adapter")).eval()
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        ids = torch.tensor(IDS, dtype=torch.long)
        via_peft, via_merge = peft_model(ids).logits.numpy(), merged(ids).logits.numpy()
        plain = transformers.AutoModelForCausalLM.from_pretrained(base).eval()(ids).logits.numpy()
    assert np.abs(via_peft - plain).max() > 1e-3, "the adapter must change the logits"
    np.testing.assert_allclose(via_peft, via_merge, atol=1e-4)
    np.testing.assert_allclose(via_merge, np.asarray(model(IDS)), atol=1e-4)


def test_adapter_gradients_are_the_ones_peft_s_autograd_computes(trained_lora, tmp_path):
    """LoRA's up-projection has its backward pass written out (`models.layers.dense`, for XLA:CPU's
    layouts); the adapters' gradients must still be what autograd gives peft on the same model and batch.
    q and v share one down-projection (`layers.fan_out`), down has its own."""
    from peft import PeftModel

    base, model, _ = trained_lora
    save_peft_adapter(model, str(tmp_path / "adapter"), base_model=base)
    peft_model = PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base),
                                           str(tmp_path / "adapter"), is_trainable=True)
    ids = torch.tensor(IDS, dtype=torch.long)
    logits = peft_model(ids).logits
    torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).backward()
    want = {name: p.grad.numpy() for name, p in peft_model.named_parameters() if p.grad is not None}

    graphdef, adapters, rest = nnx.split(model, nnx.LoRAParam, ...)

    def loss(adapters):
        logits = nnx.merge(graphdef, adapters, rest)(IDS)
        return optax.softmax_cross_entropy_with_integer_labels(logits[0, :-1], IDS[0, 1:]).mean()

    got = nnx.to_flat_state(jax.jit(jax.grad(loss))(adapters))
    assert len(got) == len(want) == 2 * 3 * 2  # A and B of q, v, down in each of 2 layers
    for path, grad in got:
        module, factor = ".".join(map(str, path[:-1])), {"lora_a": "lora_A", "lora_b": "lora_B"}[path[-1]]
        [peft_grad] = [g for name, g in want.items() if name.endswith(f".{module}.{factor}.default.weight")]
        np.testing.assert_allclose(np.asarray(grad.get_value()).T, peft_grad, rtol=1e-4, atol=1e-6, err_msg=module)


ALL_TARGETS = ["q", "k", "v", "o", "gate", "up", "down"]


# Phi-3's q/k/v and gate/up are slices of fused HF tensors: the adapters on them become one PEFT adapter
# on qkv_proj / gate_up_proj, also when only some slices have one (k, up: the others' blocks stay zero), and
# when the fused adapters' ranks differ by layer (q in layer 1 only: rank_pattern names each qkv_proj).
@pytest.mark.parametrize("write, targets, adapted", [
    (tiny_qwen2, ALL_TARGETS, 14), (tiny_qwen3, ALL_TARGETS, 14), (tiny_gemma3, ALL_TARGETS, 21),
    (tiny_phi3, ALL_TARGETS, 14), (tiny_phi3, ["k", "o", "up"], 6),
    (tiny_phi3, [r"layers\.1\.self_attn\.q_proj", "v", "gate"], 5),
], ids=["qwen2", "qwen3", "gemma3", "phi3", "phi3_some_slices", "phi3_ranks_by_layer"])
def test_peft_loads_an_adapter_on_every_short_target_of_a_llama_architecture_family(tmp_path, write, targets,
                                                                                      adapted):
    from peft import PeftModel

    base = tmp_path / "base"
    write(base)
    model, _ = jaxlm.load_pretrained(base)
    assert apply_lora(model, targets, rank=4, alpha=8.0, seed=1) == adapted
    _as_if_trained(model)
    save_peft_adapter(model, str(tmp_path / "adapter"), base_model=str(base))
    plain = transformers.AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        ids = torch.tensor(IDS, dtype=torch.long)
        without = plain(ids).logits.numpy()
        via_peft = PeftModel.from_pretrained(plain, str(tmp_path / "adapter")).eval()(ids).logits.numpy()
    assert np.abs(via_peft - without).max() > 1e-3, "the adapter must change the logits"
    np.testing.assert_allclose(via_peft, np.asarray(model(IDS)), atol=1e-4)
