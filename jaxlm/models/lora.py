"""Low-rank adapters (LoRA, Hu et al. 2021) on chosen linear layers and mixtures' experts, and merging them back.

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

from jaxlm.models import layers
from jaxlm.models.contract import is_stacked
from jaxlm.models.moe import Experts, expert_variable, grouped_matmul
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
        """`down` is x @ A when the caller computed it (`layers.fan_out` batches it over siblings). B's gradient
        comes from `layers.dense`, which keeps XLA:CPU from copying the [tokens, out] dy transposed for it.
        The scale multiplies B [rank, out], not the product [tokens, out]: the backward pass then scales B's
        small gradient instead of writing a scaled copy of every adapter's [tokens, out] cotangent (a LoRA r16
        step of SmolLM2-135M 4x256 on 2 CPU cores: scripts/experiments/cpu_speed.md)."""
        y = layers.dense(x, self.kernel[...].astype(x.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        if down is None:
            down = layers.thin_dense(x, self.lora_a[...].astype(x.dtype))
        return y + layers.dense(down, (self.scale * self.lora_b[...]).astype(x.dtype))

    def merged_kernel(self):
        return self.kernel[...] + self.scale * (self.lora_a[...] @ self.lora_b[...]).astype(self.kernel[...].dtype)


class LoRAExperts(Experts):
    """A mixture's experts with a low-rank pair per expert on each adapted projection, stacked on the expert
    axis: W_e + (alpha / rank) A_e B_e, A [experts, in, rank], B [experts, rank, out] zero-initialised (what
    PEFT's ParamWrapper computes on a 3-d expert parameter). The base kernels keep their names; the pairs are
    `<projection>_lora_a` / `_lora_b`."""

    def __init__(self, base: Experts, adapted: tuple[str, ...], rank: int, alpha: float, *, rngs: nnx.Rngs):
        self.names, self.adapted, self.scale = base.names, adapted, alpha / rank
        for name in base.names:
            setattr(self, name, getattr(base, name))
        for name in adapted:
            kernel = getattr(base, name).get_value()
            experts, in_dim, out_dim = kernel.shape
            a = jax.random.normal(rngs.params(), (experts, in_dim, rank), kernel.dtype) / jnp.sqrt(in_dim)
            b = jnp.zeros((experts, rank, out_dim), kernel.dtype)
            setattr(self, f"{name}_lora_a", expert_variable(a, nnx.LoRAParam))
            setattr(self, f"{name}_lora_b", expert_variable(b, nnx.LoRAParam))

    def pair(self, name: str) -> tuple[jax.Array, jax.Array]:
        return getattr(self, f"{name}_lora_a")[...], getattr(self, f"{name}_lora_b")[...]

    def project(self, name: str, rows: jax.Array, sizes: jax.Array) -> jax.Array:
        y = super().project(name, rows, sizes)
        if name not in self.adapted:
            return y
        a, b = self.pair(name)
        down = grouped_matmul(rows, a.astype(rows.dtype), sizes)
        return y + grouped_matmul(down, (self.scale * b).astype(rows.dtype), sizes)  # as in LoRALinear

    def merged(self, name: str) -> jax.Array:
        """Projection `name`'s kernels with the adapter folded in (any leading layer axis kept)."""
        kernel = getattr(self, name)[...]
        if name not in self.adapted:
            return kernel
        a, b = self.pair(name)
        return kernel + self.scale * jnp.einsum("...eir,...ero->...eio", a, b).astype(kernel.dtype)

    def kernels(self, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
        return tuple(self.merged(name).astype(dtype) for name in self.names)  # pyright: ignore[reportReturnType]


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


def _expert_targets(model, targets: list[str]) -> list[tuple[tuple, tuple[str, ...]]]:
    """(path of an experts module, its projections the targets name) for each mixture the targets reach."""
    short_names = architecture_of(model).family.lora_names
    found = []
    for path, module in nnx.iter_modules(model):
        if type(module) is Experts:
            names = tuple(n for n in module.names if _matches(f"{dotted(path)}.{n}", targets, short_names))
            if names:
                found.append((path, names))
    return found


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
    """Wrap the targeted linear layers and mixtures' expert projections in place. Targets are the family's
    short names (`Family.lora_names`: q,k,v,o,gate,up,down for Llama; gate/up/down also reach a mixture's
    experts), layer names (e.g. `c_attn`) or regexes over dotted paths. Returns the number of layers wrapped."""
    if rank <= 0:
        raise ValueError(f"model.lora.rank must be positive for LoRA, got {rank}")
    if is_stacked(model):
        raise ValueError("apply LoRA before stacking the layers (model.scan_layers): adapters go on per-layer weights")
    paths, experts = _linear_paths(model, targets), _expert_targets(model, targets)
    if not paths and not experts:
        raise ValueError(f"model.lora.targets {targets} match no linear layer of {type(model).__name__}")
    rngs = nnx.Rngs(seed)
    for path in paths:
        _set(model, path, LoRALinear(_get(model, path), rank, alpha, rngs=rngs))
    for path, names in experts:
        _set(model, path, LoRAExperts(_get(model, path), names, rank, alpha, rngs=rngs))
    return len(paths) + sum(len(names) for _, names in experts)


def has_lora(model) -> bool:
    return any(isinstance(m, (LoRALinear, LoRAExperts)) for _, m in nnx.iter_modules(model))


def merge_lora(model):
    """A copy of `model` with every adapter folded into its base kernel (plain nnx.Linear again).
    Stacked layers stay stacked: their kernels keep the leading layer axis."""
    merged = nnx.clone(model)
    for path, module in list(nnx.iter_modules(merged)):
        if isinstance(module, LoRALinear):
            kernel = module.merged_kernel()
            linear = _unfilled_linear(kernel, use_bias=module.bias is not None)
            linear.kernel.set_value(kernel)
            if module.bias is not None:
                linear.bias.set_value(module.bias[...])  # pyright: ignore[reportOptionalMemberAccess]  use_bias
            for new, old in ((linear.kernel, module.kernel), (linear.bias, module.bias)):
                if old is not None and LAYER_AXIS in old.get_metadata():
                    new.set_metadata(LAYER_AXIS, old.get_metadata(LAYER_AXIS))  # pyright: ignore[reportOptionalMemberAccess]
            _set(merged, path, linear)
        elif isinstance(module, LoRAExperts):
            _set(merged, path, _plain_experts(module))
    return merged


def _unfilled_linear(kernel: jax.Array, use_bias: bool) -> nnx.Linear:
    """An nnx.Linear of `kernel`'s shape whose parameters are only shapes, to be set: a randomly initialised
    one would compute (and compile) an initializer per shape for weights that are thrown away."""
    return nnx.eval_shape(lambda: nnx.Linear(*kernel.shape[-2:], use_bias=use_bias, param_dtype=kernel.dtype,
                                             rngs=nnx.Rngs(0)))


def _plain_experts(module: LoRAExperts) -> Experts:
    gate = module.merged(module.names[0])
    plain = nnx.eval_shape(lambda: Experts(gate.shape[-3], gate.shape[-2], gate.shape[-1], module.names,
                                           rngs=nnx.Rngs(0), param_dtype=gate.dtype))  # shapes only: set below
    for name in module.names:
        new, old = getattr(plain, name), getattr(module, name)
        new.set_value(module.merged(name))
        if LAYER_AXIS in old.get_metadata():
            new.set_metadata(LAYER_AXIS, old.get_metadata(LAYER_AXIS))
    return plain


def lora_modules(model) -> list[tuple[tuple, LoRALinear]]:
    return [(path, m) for path, m in nnx.iter_modules(model) if isinstance(m, LoRALinear)]


def lora_experts(model) -> list[tuple[tuple, LoRAExperts]]:
    return [(path, m) for path, m in nnx.iter_modules(model) if isinstance(m, LoRAExperts)]
