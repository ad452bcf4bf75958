"""`model.train_only`: only the matching parameters train (beside LoRA adapters); the rest stay bitwise as loaded."""

from __future__ import annotations

import re

import chex
import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import jaxlm
from jaxlm.hf.peft import fully_trained_modules, save_peft_adapter
from jaxlm.models.lora import apply_lora
from jaxlm.models.weight_map import dotted
from jaxlm.train.config import ConfigError, load_config
from jaxlm.train.engine import build_engine, trainable_filter
from train_helpers import write_tiny_llama


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("freeze") / "model")


def lm_batch(seed):
    ids = np.random.RandomState(seed).randint(3, 320, size=(2, 9)).astype(np.int32)
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": np.ones((2, 8), np.float32),
            "segment_ids": np.ones((2, 8), np.int32), "positions": np.tile(np.arange(8, dtype=np.int32), (2, 1))}


def engine_for(llama_dir, *overrides, lora_targets=()):
    cfg = load_config(None, [f"model.path={llama_dir}", "task=causal_lm", "train.batch_size=2", "train.seq_len=8",
                             "train.warmup_steps=0", "train.learning_rate=1e-2", "model.lora.rank=0", *overrides])
    model, _ = jaxlm.load_pretrained(llama_dir)
    if lora_targets:
        apply_lora(model, list(lora_targets), cfg.model.lora.rank, cfg.model.lora.alpha)
    return cfg, model, build_engine(model, cfg)


def flat(state) -> dict[str, np.ndarray]:
    return {dotted(p): np.array(v.get_value()) for p, v in nnx.to_flat_state(state)}


def test_only_matching_parameters_train_and_everything_else_stays_bitwise(llama_dir):
    cfg, model, engine = engine_for(llama_dir, r"model.train_only=['layers\.1\.mlp\.', '^norm']")
    before = flat(nnx.state(model, nnx.Param))
    trained = set(flat(engine.state.params))
    assert trained == {p for p in before if re.search(r"layers\.1\.mlp\.|^norm", p)}
    moments = [x for x in jax.tree.leaves(engine.state.opt_state) if x.ndim > 0]
    assert sum(x.size for x in moments) == 2 * sum(before[p].size for p in trained)  # state only for these
    for step in range(2):
        engine.step(lm_batch(step))
    engine.update_model(model)
    after = flat(nnx.state(model, nnx.Param))
    for path in before:
        changed = not np.array_equal(before[path], after[path])
        assert changed == (path in trained), path


def test_with_lora_the_matching_modules_train_in_full_and_peft_loads_them(llama_dir, tmp_path):
    from peft import PeftModel

    cfg, model, engine = engine_for(llama_dir, "model.lora.rank=4", "model.train_only=['^lm_head']",
                                    lora_targets=("q", "v"))
    frozen_before = jax.tree.map(np.array, engine.frozen)
    for step in range(2):
        engine.step(lm_batch(step))
    chex.assert_trees_all_equal(jax.tree.map(np.array, engine.frozen), frozen_before)
    engine.update_model(model)
    assert fully_trained_modules(model, trainable_filter(cfg)) == ("lm_head",)
    save_peft_adapter(model, str(tmp_path / "adapter"), base_model=llama_dir, modules_to_save=("lm_head",))
    peft_model = PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(llama_dir),
                                           str(tmp_path / "adapter")).eval()
    ids = lm_batch(5)["input_ids"]
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(theirs, np.asarray(model(ids)), atol=1e-4)


def test_train_only_that_matches_nothing_or_a_lora_kernel_is_a_config_error(llama_dir):
    with pytest.raises(ConfigError, match=r"model.train_only=\['decoder'\] matches no parameter"):
        engine_for(llama_dir, "model.train_only=['decoder']")
    with pytest.raises(ConfigError, match=r"matches layers.0.self_attn.q_proj.kernel, which also has a LoRA adapter"):
        engine_for(llama_dir, "model.lora.rank=2", r"model.train_only=['layers\.0\.self_attn']", lora_targets=("q",))
    with pytest.raises(ConfigError, match=r"model.train_only\[0\]='\(' is not a valid regex"):
        load_config(None, ["model.train_only=['(']"])
