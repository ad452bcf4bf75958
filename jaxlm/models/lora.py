"""Low-rank adapters (LoRA, Hu et al. 2021) on chosen linear layers, and merging them back.

`apply_lora` swaps each targeted `nnx.Linear` for a `LoRALinear` that keeps the base
`kernel`/`bias` under the same names (so weight maps and export still work) and adds
`lora_a`/`lora_b` as `nnx.LoRAParam`, the variable type an optimizer can be restricted to.
Writing adapters in PEFT's format is I/O and lives in `jaxlm.hf.peft`.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models.contract import is_stacked
from jaxlm.models.registry import architecture_of
from jaxlm.models.scan import LAYER_AXIS
from jaxlm.models.weight_map import dotted


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

    def __call__(self, x, down=None):
        """`down` is x @ A when the caller computed it (`layers.fan_out` batches it over siblings)."""
        y = x @ self.kernel[...].astype(x.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        if down is None:
            down = x @ self.lora_a[...].astype(x.dtype)
        return y + self.scale * (down @ self.lora_b[...].astype(x.dtype))

    def merged_kernel(self):
        return self.kernel[...] + self.scale * (self.lora_a[...] @ self.lora_b[...]).astype(self.kernel[...].dtype)


def _matches(path: str, targets: list[str], short_names) -> bool:
    """A target is one of the family's short names, a layer name, or a regex over the dotted path.
    A short name means only its layer ("gate" is gate_proj, never a mixture of experts' router `gate`)."""
    name = path.rsplit(".", 1)[-1]
    return any(name == short_names.get(t, t) or re.fullmatch(t, path) for t in targets)


def _linear_paths(model, targets: list[str]) -> list[tuple]:
    short_names = architecture_of(model).family.lora_names
    return [
        path
        for path, module in nnx.iter_modules(model)
        if type(module) is nnx.Linear and _matches(dotted(path), targets, short_names)
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
    """Wrap the targeted linear layers in place. Targets are the family's short names (`Family.lora_names`:
    q,k,v,o,gate,up,down for Llama), layer names (e.g. `c_attn`) or regexes over dotted paths.
    Returns the number of layers wrapped."""
    if rank <= 0:
        raise ValueError(f"model.lora.rank must be positive for LoRA, got {rank}")
    if is_stacked(model):
        raise ValueError("apply LoRA before stacking the layers (model.scan_layers): adapters go on per-layer weights")
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
    """A copy of `model` with every adapter folded into its base kernel (plain nnx.Linear again).
    Stacked layers stay stacked: their kernels keep the leading layer axis."""
    merged = nnx.clone(model)
    for path, module in list(nnx.iter_modules(merged)):
        if isinstance(module, LoRALinear):
            kernel = module.merged_kernel()
            linear = nnx.Linear(
                *kernel.shape[-2:], use_bias=module.bias is not None, param_dtype=kernel.dtype, rngs=nnx.Rngs(0)
            )
            linear.kernel.set_value(kernel)
            if module.bias is not None:
                linear.bias.set_value(module.bias[...])  # pyright: ignore[reportOptionalMemberAccess]  use_bias
            for new, old in ((linear.kernel, module.kernel), (linear.bias, module.bias)):
                if old is not None and LAYER_AXIS in old.get_metadata():
                    new.set_metadata(LAYER_AXIS, old.get_metadata(LAYER_AXIS))  # pyright: ignore[reportOptionalMemberAccess]
            _set(merged, path, linear)
    return merged


def lora_modules(model) -> list[tuple[tuple, LoRALinear]]:
    return [(path, m) for path, m in nnx.iter_modules(model) if isinstance(m, LoRALinear)]
