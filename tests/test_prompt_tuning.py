"""Prompt tuning: only the virtual tokens train, and PEFT loads the adapter with the same logits and answers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import jaxlm
from jaxlm.hf.peft import load_prompt_tuning_adapter, save_prompt_tuning_adapter
from jaxlm.models.prompt_tuning import VirtualTokens, apply_prompt_tuning, prepend_virtual_tokens, prompt_embed
from jaxlm.train import train
from jaxlm.train.config import ConfigError, load_config
from jaxlm.train.engine import build_engine
from train_helpers import tiny_config, write_text, write_tiny_llama

IDS = np.array([[5, 17, 33, 9, 60, 2, 7, 8]], np.int32)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("prompt") / "base")


def ours_and_peft_logits(model, base_dir, adapter_dir):
    """(jaxlm's logits of IDS after the virtual tokens, PEFT's from the saved adapter, the PEFT model)."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base_dir),
                                           str(adapter_dir)).eval()
    ids, positions, segments, n = prepend_virtual_tokens(model, jnp.asarray(IDS), jnp.arange(8)[None],
                                                         jnp.ones_like(jnp.asarray(IDS)))
    ours = np.asarray(model(ids, positions=positions, segment_ids=segments))[:, n:]
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.tensor(IDS, dtype=torch.long)).logits.numpy()[:, n:]
    return ours, theirs, peft_model


def test_peft_loads_the_adapter_with_the_same_logits_and_greedy_answer(llama_dir, tmp_path):
    model, _ = jaxlm.load_pretrained(llama_dir)
    apply_prompt_tuning(model, 4, seed=1)
    embed = prompt_embed(model)  # as after training: far from the sampled vocabulary rows
    embed.virtual_tokens.set_value(embed.virtual_tokens[...] + 0.3 * jax.random.normal(jax.random.key(0), (4, 64)))
    save_prompt_tuning_adapter(model, str(tmp_path / "adapter"), base_model=llama_dir)
    config = json.loads(Path(tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 4

    ours, theirs, peft_model = ours_and_peft_logits(model, llama_dir, tmp_path / "adapter")
    with torch.no_grad():
        plain = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()(
            input_ids=torch.tensor(IDS, dtype=torch.long)).logits.numpy()
    assert np.abs(theirs - plain).max() > 1e-2, "the virtual tokens must change the logits"
    np.testing.assert_allclose(ours, theirs, atol=1e-5)

    # Greedy answers: PEFT's generate() loses its KV cache with transformers 5 (it re-injects the prompt at
    # every step), so the reference is a greedy loop over PEFT's full forward pass.
    reference = IDS[0].tolist()
    with torch.no_grad():
        for _ in range(6):
            logits = peft_model(input_ids=torch.tensor([reference], dtype=torch.long)).logits
            reference.append(int(logits[0, -1].argmax()))
    result = jaxlm.generate(model, None, [IDS[0].tolist()], max_new_tokens=6, stop_at_eos=False)
    assert result.token_ids[0] == reference[8:] and result.prompt_lengths == [8]

    reloaded, _ = jaxlm.load_pretrained(llama_dir)  # what `jaxlm generate --adapter DIR` does
    load_prompt_tuning_adapter(reloaded, str(tmp_path / "adapter"))
    again = jaxlm.generate(reloaded, None, [IDS[0].tolist()], max_new_tokens=6, stop_at_eos=False)
    assert again.token_ids == result.token_ids


def test_only_the_virtual_tokens_train_and_only_they_have_optimizer_state(llama_dir):
    cfg = load_config(None, [f"model.path={llama_dir}", "task=causal_lm", "model.lora.rank=0", "data.pack=false",
                             "model.prompt_tuning.num_virtual_tokens=3", "train.batch_size=2", "train.seq_len=8",
                             "train.warmup_steps=0", "train.learning_rate=0.05"])
    model, _ = jaxlm.load_pretrained(llama_dir)
    apply_prompt_tuning(model, 3)
    engine = build_engine(model, cfg)
    trainable = nnx.to_flat_state(engine.state.params)
    assert [type(v) for _, v in trainable] == [VirtualTokens]
    moments = [x for x in jax.tree.leaves(engine.state.opt_state) if x.ndim > 0]
    assert sum(x.size for x in moments) == 2 * 3 * 64  # Adam's two moments of a [3, 64] table
    before_frozen, before_prompt = jax.tree.map(np.array, (engine.frozen, engine.state.params))
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 320, size=(2, 9)).astype(np.int32)
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": np.ones((2, 8), np.float32),
             "segment_ids": np.ones((2, 8), np.int32), "positions": np.tile(np.arange(8, dtype=np.int32), (2, 1))}
    losses = [float(engine.step(batch)["loss"]) for _ in range(3)]
    assert losses[-1] < losses[0]
    chex.assert_trees_all_equal(jax.tree.map(np.array, engine.frozen), before_frozen)
    assert not np.array_equal(np.array(jax.tree.leaves(engine.state.params)[0]), jax.tree.leaves(before_prompt)[0])


def test_a_prompt_tuning_run_writes_a_peft_adapter_and_keeps_the_base_weights(llama_dir, tmp_path):
    cfg = tiny_config(tmp_path, llama_dir, "causal_lm", [write_text(tmp_path / "text")], "data.pack=false",
                      "model.prompt_tuning.num_virtual_tokens=4", "train.steps=6", "eval.every=3",
                      "train.learning_rate=0.05")
    result = train(cfg, progress=False)
    assert result.eval_losses[-1][1] < result.eval_losses[0][1]
    adapter = os.path.join(cfg.output_dir, "adapter")
    assert json.loads(Path(os.path.join(adapter, "adapter_config.json")).read_text())["peft_type"] == "PROMPT_TUNING"
    exported = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(cfg.output_dir, "hf"))
    base = transformers.AutoModelForCausalLM.from_pretrained(llama_dir)
    for (name, theirs), (_, ours) in zip(base.state_dict().items(), exported.state_dict().items(), strict=False):
        assert torch.equal(theirs, ours), name

    # jaxlm eval on the run folder puts its adapter on hf/ (the base weights): the loss is PEFT's.
    from peft import PeftModel

    from jaxlm.eval.cli import main as eval_main

    text = cfg.data.train[0].path
    assert eval_main(["--model", cfg.output_dir, "--data", text, "--task", "causal_lm", "--no-general",
                      "--no-progress", "--out", str(tmp_path / "eval")]) == 0
    result = json.loads(Path(tmp_path / "eval" / "eval.json").read_text())
    assert result["adapter"] == adapter
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(llama_dir)
    nll = count = 0.0
    for name in sorted(os.listdir(text)):
        ids = tokenizer(Path(os.path.join(text, name)).read_text())["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = peft_model(input_ids=torch.tensor([ids])).logits[0, 4:-1]  # after the 4 virtual tokens
        nll += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
        count += len(ids) - 1
    assert result["scores"]["tokens"] == count
    assert result["scores"]["loss"] == pytest.approx(nll / count, rel=1e-4)


@pytest.mark.parametrize("override, message", [
    ("data.pack=true", "needs data.pack=false"),
    ("model.lora.rank=4", "set model.lora.rank=0"),
    ("task=token_classification", "needs task sft or causal_lm"),
])
def test_prompt_tuning_refuses_what_it_cannot_do(override, message):
    base = ["model.prompt_tuning.num_virtual_tokens=8", "model.lora.rank=0", "data.pack=false"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*base, override])


def test_gemma_virtual_tokens_enter_unscaled_as_peft_passes_them(tmp_path):
    """Gemma scales token embeddings by sqrt(hidden); PEFT's prompt embeddings go in as inputs_embeds, unscaled."""
    from hf_checkpoints import tiny_gemma2

    tiny_gemma2(tmp_path / "base")
    model, _ = jaxlm.load_pretrained(tmp_path / "base")
    apply_prompt_tuning(model, 4, seed=1)
    save_prompt_tuning_adapter(model, str(tmp_path / "adapter"), base_model=str(tmp_path / "base"))
    ours, theirs, _ = ours_and_peft_logits(model, tmp_path / "base", tmp_path / "adapter")
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
