"""LoRA adapters in PEFT's format: the files `peft.PeftModel.from_pretrained` reads onto the HF base model."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

from jaxlm.hf.export import hf_state_dict
from jaxlm.models import architecture_of
from jaxlm.models.lora import lora_modules
from jaxlm.models.weight_map import dotted, ours_to_hf


def peft_adapter(model, *, base_model: str = "", modules_to_save: tuple[str, ...] = ()):
    """(tensors, adapter_config) in the layout `peft.PeftModel.from_pretrained` reads.

    PEFT keeps `lora_A` as [rank, in] and `lora_B` as [out, rank] (torch Linear layout) under
    `base_model.model.<HF module name>`; its scale is lora_alpha / r, the same as ours.
    `modules_to_save` (e.g. a freshly trained "classifier") are written whole.
    """
    arch = architecture_of(model)
    tensors, targets, ranks, alphas, hf_layouts = {}, set(), set(), set(), set()
    for path, module in lora_modules(model):
        hf_name, transpose = ours_to_hf(arch.family, dotted(path) + ".kernel")
        module_name = hf_name.removesuffix(".weight")
        prefix = f"base_model.model.{module_name}"
        tensors[f"{prefix}.lora_A.weight"] = np.asarray(module.lora_a[...], np.float32).T
        tensors[f"{prefix}.lora_B.weight"] = np.asarray(module.lora_b[...], np.float32).T
        targets.add(module_name.rsplit(".", 1)[-1])
        rank = module.lora_a[...].shape[1]
        ranks.add(rank)
        alphas.add(module.scale * rank)
        hf_layouts.add(transpose)
    if len(ranks) != 1:
        raise ValueError("peft_adapter needs a model with LoRA layers of one rank")
    if modules_to_save:
        for name, value in hf_state_dict(model).items():
            if name.split(".")[0] in modules_to_save:
                module, leaf = name.rsplit(".", 1)
                tensors[f"base_model.model.{module}.modules_to_save.default.{leaf}"] = np.asarray(value, np.float32)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if arch.family.causal_lm else "TOKEN_CLS",
        "base_model_name_or_path": base_model,
        "r": ranks.pop(),
        "lora_alpha": alphas.pop(),
        "lora_dropout": 0.0,
        "target_modules": sorted(targets),
        # HF kernels we need not transpose are stored [in, out] (GPT-2's Conv1D): PEFT calls that fan_in_fan_out.
        "fan_in_fan_out": hf_layouts == {False},
        "bias": "none",
        "use_rslora": False,
        "modules_to_save": list(modules_to_save) or None,
        "inference_mode": True,
    }
    return tensors, config


def save_peft_adapter(model, out_dir: str, *, base_model: str = "", modules_to_save: tuple[str, ...] = ()) -> str:
    """Write adapter_config.json + adapter_model.safetensors (PEFT format) to `out_dir`."""
    tensors, config = peft_adapter(model, base_model=base_model, modules_to_save=modules_to_save)
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    return out_dir
