"""Loading every HF checkpoint layout, exporting back, and the errors bad checkpoints get."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import hf_checkpoints
import jaxlm
from hf_checkpoints import (
    assert_same_tensors,
    padded_batch,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    tiny_mistral,
    torch_logits,
)
from jaxlm.hf import CheckpointError

WRITERS = {"llama": tiny_llama, "llama_tied": lambda p: tiny_llama(p, tied=True), "mistral": tiny_mistral,
           "qwen2": hf_checkpoints.tiny_qwen2,
           "qwen3_tied_bias": lambda p: hf_checkpoints.tiny_qwen3(p, tied=True, bias=True),
           "gpt2": tiny_gpt2, "bert": tiny_bert, "bert_tagger": lambda p: tiny_bert(p, num_labels=4)}
AUTO = {"bert": transformers.AutoModel, "bert_tagger": transformers.AutoModelForTokenClassification}


@pytest.mark.parametrize("family", sorted(WRITERS))
def test_export_round_trip_gives_transformers_the_same_logits(tmp_path, family):
    WRITERS[family](tmp_path / "src")
    model, _ = jaxlm.load_pretrained(tmp_path / "src")
    jaxlm.export_pretrained(model, tmp_path / "out")
    reloaded, info = AUTO.get(family, transformers.AutoModelForCausalLM).from_pretrained(
        tmp_path / "out", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert_same_tensors(tmp_path / "src", tmp_path / "out")
    ids, mask = padded_batch(seed=7)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    theirs = torch_logits(reloaded.eval(), ids, mask)
    real = mask.astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() <= 1e-4


def test_export_writes_tokenizer_and_bfloat16_weights(tmp_path, minilm_dir):
    model, tokenizer = jaxlm.load_pretrained(minilm_dir)
    jaxlm.export_pretrained(model, tmp_path, tokenizer, dtype=jnp.bfloat16)
    assert json.loads(Path(tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("Hello world").input_ids == tokenizer("Hello world").input_ids
    back, _ = jaxlm.load_pretrained(tmp_path)
    assert back.encoder.layer[0].output.dense.kernel[...].dtype == jnp.float32  # loads in the asked dtype


def test_real_minilm_matches_transformers(minilm_dir):
    model, tokenizer = jaxlm.load_pretrained(minilm_dir)
    tokenizer.no_padding() if hasattr(tokenizer, "no_padding") else None
    texts = ["A cat sits on the mat.", "Offline weights, shipped in a wheel."]
    batch = tokenizer(texts, padding=True, return_tensors="np")
    ref = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        theirs = ref(**{k: torch.tensor(v) for k, v in batch.items()}).last_hidden_state.numpy()
    inputs = [jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
    ours = np.asarray(model(*inputs))
    real = batch["attention_mask"].astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() <= 1e-4


def test_loads_torch_bin_with_weights_only(tmp_path):
    ref = tiny_llama(tmp_path / "src")
    os.makedirs(tmp_path / "bin")
    torch.save(ref.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    shutil.copy(tmp_path / "src" / "config.json", tmp_path / "bin")
    from_bin, _ = jaxlm.load_pretrained(tmp_path / "bin")
    from_st, _ = jaxlm.load_pretrained(tmp_path / "src")
    ids, mask = padded_batch()
    np.testing.assert_array_equal(np.asarray(from_bin(ids, mask)), np.asarray(from_st(ids, mask)))


def test_loads_sharded_safetensors(tmp_path):
    ref = tiny_llama(tmp_path / "src")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="60KB")
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    model, _ = jaxlm.load_pretrained(tmp_path / "sharded")
    ids, mask = padded_batch()
    real = mask.astype(bool)
    assert np.abs(np.asarray(model(ids, mask))[real] - torch_logits(ref, ids, mask)[real]).max() <= 1e-4


def _edit_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    config = json.loads(Path(path).read_text())
    config.update(changes)
    Path(path).write_text(json.dumps(config))


def _rewrite_tensors(folder, edit):
    from safetensors.numpy import save_file

    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def test_unknown_model_type_is_named(tmp_path):
    tiny_llama(tmp_path)
    _edit_config(tmp_path, model_type="mamba")
    with pytest.raises(ValueError, match=r"config.json: unknown model_type 'mamba'"):
        jaxlm.load_pretrained(tmp_path)


def test_mistral_sliding_window_is_refused_not_ignored(tmp_path):
    tiny_mistral(tmp_path, sliding_window=16)
    with pytest.raises(ValueError, match=r"config.json: sliding_window=16 is shorter than max_position_embeddings=256"):
        jaxlm.load_pretrained(tmp_path)


@pytest.mark.parametrize("write", [hf_checkpoints.tiny_qwen2, hf_checkpoints.tiny_qwen3], ids=["qwen2", "qwen3"])
def test_qwen_sliding_window_is_refused_with_the_key_named(tmp_path, write):
    write(tmp_path)
    _edit_config(tmp_path, use_sliding_window=True)
    with pytest.raises(CheckpointError, match=r"config.json: use_sliding_window=true; sliding-window attention"):
        jaxlm.load_pretrained(tmp_path)
    _edit_config(tmp_path, use_sliding_window=False, layer_types=["full_attention", "sliding_attention"])
    with pytest.raises(CheckpointError, match=r"config.json: layer_types has 'sliding_attention'"):
        jaxlm.load_pretrained(tmp_path)


def test_an_unsupported_rope_scaling_is_refused_at_load(tmp_path):
    hf_checkpoints.tiny_qwen2(tmp_path)
    _edit_config(tmp_path, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6})
    with pytest.raises(CheckpointError, match=r"config.json: rope_scaling type 'yarn' is not supported"):
        jaxlm.load_pretrained(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    tiny_llama(tmp_path)
    _rewrite_tensors(tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        jaxlm.load_pretrained(tmp_path)


def test_unexpected_tensor_is_named(tmp_path):
    tiny_llama(tmp_path)
    extra = {"model.layers.0.self_attn.extra.weight": np.zeros((2, 2), np.float32)}
    _rewrite_tensors(tmp_path, lambda t: t.update(extra))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model.layers.0.self_attn.extra.weight'"):
        jaxlm.load_pretrained(tmp_path)


def test_shape_mismatch_names_tensor_expected_and_got(tmp_path):
    tiny_llama(tmp_path)
    _rewrite_tensors(tmp_path, lambda t: t.update({"model.norm.weight": np.ones((63,), np.float32)}))
    with pytest.raises(CheckpointError, match=r"'model.norm.weight' has shape \(63,\), expected \(64,\)"):
        jaxlm.load_pretrained(tmp_path)


def test_shape_mismatch_speaks_the_files_layout(tmp_path):
    # HF stores Linear weights as [out, in]; ours are [in, out]: the message must not show ours.
    tiny_llama(tmp_path)
    wrong = {"model.layers.0.mlp.up_proj.weight": np.ones((111, 64), np.float32)}
    _rewrite_tensors(tmp_path, lambda t: t.update(wrong))
    with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.up_proj.weight' has shape \(111, 64\), "
                                              r"expected \(112, 64\)"):
        jaxlm.load_pretrained(tmp_path)


def test_truncated_safetensors_names_the_file(tmp_path):
    tiny_llama(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model.safetensors: corrupt or truncated"):
        jaxlm.load_pretrained(tmp_path)


def test_corrupt_gguf_names_the_file(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"broken.gguf: not a readable GGUF file"):
        jaxlm.load_pretrained(path)


def test_invalid_config_json_names_the_line(tmp_path):
    tiny_llama(tmp_path)
    (tmp_path / "config.json").write_text('{\n  "model_type": "llama",\n  oops\n}')
    with pytest.raises(CheckpointError, match=r"config.json:3: invalid JSON"):
        jaxlm.load_pretrained(tmp_path)


def test_convert_cli_writes_a_folder_and_reports_errors(tmp_path, capsys):
    from jaxlm.convert import main

    tiny_gpt2(tmp_path / "src")
    assert main([str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    assert {"config.json", "model.safetensors", "generation_config.json"} <= set(os.listdir(tmp_path / "out"))
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "out2")]) == 2
    assert "no such model folder" in capsys.readouterr().err
