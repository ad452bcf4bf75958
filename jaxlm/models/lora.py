"""Low-rank adapters (LoRA, Hu et al. 2021) on chosen linear layers, and merging them back.

`apply_lora` swaps each targeted `nnx.Linear` for a `LoRALinear` that keeps the base
`kernel`/`bias` under the same names (so weight maps and export still work) and adds
`lora_a`/`lora_b` as `nnx.LoRAParam`, the variable type an optimizer can be restricted to.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models.weight_map import dotted, ours_to_hf

# Short target names users write, and the HF layer names they stand for, per family.
SHORT_NAMES = {
    "q": ("q_proj", "query"),
    "k": ("k_proj", "key"),
    "v": ("v_proj", "value"),
    "o": ("o_proj",),
    "gate": ("gate_proj",),
    "up": ("up_proj",),
    "down": ("down_proj",),
    "qkv": ("c_attn",),
}


class LoRALinear(nnx.Module):
    """y = x W + b + (alpha / rank) * x A B, with B zero-initialised so training starts at the base model."""

    def __init__(self, base: nnx.Linear, rank: int, alpha: float, *, rngs: nnx.Rngs):
        in_dim, out_dim = base.kernel.get_value().shape
        self.kernel = base.kernel
        self.bias = base.bias
        dtype = base.kernel.get_value().dtype
        self.lora_a = nnx.LoRAParam(jax.random.normal(rngs.params(), (in_dim, rank), dtype) / jnp.sqrt(in_dim))
        self.lora_b = nnx.LoRAParam(jnp.zeros((rank, out_dim), dtype))
        self.scale = alpha / rank

    def __call__(self, x):
        y = x @ self.kernel[...].astype(x.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        update = (x @ self.lora_a[...].astype(x.dtype)) @ self.lora_b[...].astype(x.dtype)
        return y + self.scale * update

    def merged_kernel(self):
        return self.kernel[...] + self.scale * (self.lora_a[...] @ self.lora_b[...]).astype(self.kernel[...].dtype)


def _matches(path: str, targets: list[str]) -> bool:
    name = path.rsplit(".", 1)[-1]
    for target in targets:
        if name in SHORT_NAMES.get(target, ()) or name == target or re.fullmatch(target, path):
            return True
    return False


def _linear_paths(model, targets: list[str]) -> list[tuple]:
    return [
        path
        for path, module in nnx.iter_modules(model)
        if type(module) is nnx.Linear and _matches(dotted(path), targets)
    ]


def _set(model, path: tuple, module) -> None:
    parent = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
        parent[path[-1]] = module
    else:
        setattr(parent, path[-1], module)


def _get(model, path: tuple):
    for key in path:
        model = model[key] if isinstance(key, int) else getattr(model, key)
    return model


def apply_lora(model, targets: list[str], rank: int, alpha: float, *, seed: int = 0):
    """Wrap the targeted linear layers in place. Targets are short names (q,k,v,o,gate,up,down),
    layer names (e.g. `c_attn`) or regexes over dotted paths. Returns the number of layers wrapped."""
    if rank <= 0:
        raise ValueError(f"model.lora.rank must be positive for LoRA, got {rank}")
    paths = _linear_paths(model, targets)
    if not paths:
        raise ValueError(f"model.lora.targets {targets} match no linear layer of {type(model).__name__}")
    rngs = nnx.Rngs(seed)
    for path in paths:
        _set(model, path, LoRALinear(_get(model, path), rank, alpha, rngs=rngs))
    return len(paths)


def has_lora(model) -> bool:
    return any(isinstance(m, LoRALinear) for _, m in nnx.iter_modules(model))


def merge_lora(model):
    """A copy of `model` with every adapter folded into its base kernel (plain nnx.Linear again)."""
    merged = nnx.clone(model)
    for path, module in list(nnx.iter_modules(merged)):
        if isinstance(module, LoRALinear):
            kernel = module.merged_kernel()
            linear = nnx.Linear(
                *kernel.shape, use_bias=module.bias is not None, param_dtype=kernel.dtype, rngs=nnx.Rngs(0)
            )
            linear.kernel.set_value(kernel)
            if module.bias is not None:
                linear.bias.set_value(module.bias[...])
            _set(merged, path, linear)
    return merged


def lora_modules(model) -> list[tuple[tuple, LoRALinear]]:
    return [(path, m) for path, m in nnx.iter_modules(model) if isinstance(m, LoRALinear)]


def peft_adapter(model, *, base_model: str = "", modules_to_save: tuple[str, ...] = ()):
    """(tensors, adapter_config) in the layout `peft.PeftModel.from_pretrained` reads.

    PEFT keeps `lora_A` as [rank, in] and `lora_B` as [out, rank] (torch Linear layout) under
    `base_model.model.<HF module name>`; its scale is lora_alpha / r, the same as ours.
    `modules_to_save` (e.g. a freshly trained "classifier") are written whole.
    """
    import numpy as np

    from jaxlm.models import architecture_of

    arch = architecture_of(model)
    tensors, targets, ranks, alphas = {}, set(), set(), set()
    for path, module in lora_modules(model):
        hf_name, _ = ours_to_hf(arch.family, dotted(path) + ".kernel")
        module_name = hf_name.removesuffix(".weight")
        prefix = f"base_model.model.{module_name}"
        tensors[f"{prefix}.lora_A.weight"] = np.asarray(module.lora_a[...], np.float32).T
        tensors[f"{prefix}.lora_B.weight"] = np.asarray(module.lora_b[...], np.float32).T
        targets.add(module_name.rsplit(".", 1)[-1])
        rank = module.lora_a[...].shape[1]
        ranks.add(rank)
        alphas.add(module.scale * rank)
    if len(ranks) != 1:
        raise ValueError("peft_adapter needs a model with LoRA layers of one rank")
    if modules_to_save:
        from jaxlm.hf.export import hf_state_dict

        for name, value in hf_state_dict(model).items():
            if name.split(".")[0] in modules_to_save:
                module, leaf = name.rsplit(".", 1)
                tensors[f"base_model.model.{module}.modules_to_save.default.{leaf}"] = np.asarray(value, np.float32)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if arch.causal_lm else "TOKEN_CLS",
        "base_model_name_or_path": base_model,
        "r": ranks.pop(),
        "lora_alpha": alphas.pop(),
        "lora_dropout": 0.0,
        "target_modules": sorted(targets),
        "fan_in_fan_out": arch.family == "gpt2",  # GPT-2's Conv1D stores [in, out]
        "bias": "none",
        "use_rslora": False,
        "modules_to_save": list(modules_to_save) or None,
        "inference_mode": True,
    }
    return tensors, config


def save_peft_adapter(model, out_dir: str, *, base_model: str = "", modules_to_save: tuple[str, ...] = ()) -> str:
    """Write adapter_config.json + adapter_model.safetensors (PEFT format) to `out_dir`."""
    import json
    import os

    import numpy as np
    from safetensors.numpy import save_file

    tensors, config = peft_adapter(model, base_model=base_model, modules_to_save=modules_to_save)
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    return out_dir
