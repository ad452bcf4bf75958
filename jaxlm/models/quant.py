"""int8 weights for generation: linear layers (and a tied output projection) stored as int8.

`quantize_int8(model)` swaps each `nnx.Linear` for an `Int8Linear`, a tied embedding for an
`Int8Embed` and a mixture's experts for `Int8Experts`, in place, as LoRA does: the model files stay
untouched. A mixture's router stays float, as llama.cpp keeps it: a rounded router logit can send a
token to other experts, which moves the output far more than rounding an expert's weights. Weights are rounded to int8
with one float32 scale per output channel (symmetric, absmax / 127). Embedding lookups and norms
stay as they are; the tied output projection (SmolLM2's lm_head is its 49152 x 576 embedding, the
largest matrix) gets an int8 copy of the table, since it is read whole at every generated token.

Two ways to run the matmul, chosen per model (`activations`):

- "float": y = (x @ int8_weight) * scale, the weight converted inside the jitted matmul. On GPU
  and TPU XLA fuses that convert into the dot, so only the int8 bytes are read.
- "int8": each row of x is also written in int8, as two int8 digits (see `int8_digits`), the dot
  runs int8 x int8 with int32 accumulation, and the scales are applied after. XLA:CPU does not
  fuse a convert into a dot: "float" there first writes a float32 copy of every weight, per step,
  and runs 10-20x slower than float32 weights. Its int8 x int8 dot goes to YNNPACK's int8 GEMM,
  which reads the int8 bytes directly (weights stored [out, in], both operands contracting
  their minor dimension).

`default_activations()` picks "int8" on CPU and "float" elsewhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.models.layers import Embed
from jaxlm.models.lora import LoRAExperts, LoRALinear, _set
from jaxlm.models.moe import Experts, SparseMoE, expert_variable, grouped_matmul
from jaxlm.models.prompt_tuning import PromptTunedEmbed
from jaxlm.models.registry import architecture_of

ACTIVATIONS = ("int8", "float")


class Int8Weight(nnx.Variable):
    """An int8 matrix or its scales: not an `nnx.Param`, so optimizers and weight maps skip it."""


def quantize_rows(w) -> tuple[jax.Array, jax.Array]:
    """Symmetric int8 per row: (int8 [rows, cols], float32 scale [rows]) with w ~= q * scale[:, None].

    Done once at load time, on the host: numpy needs no compilation per weight shape."""
    w = np.asarray(w, np.float32)
    amax = np.abs(w).max(axis=-1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[..., None]), -127, 127).astype(np.int8)
    return jnp.asarray(q), jnp.asarray(scale)


def int8_matmul(x: jax.Array, weight: jax.Array, scale: jax.Array, activations: str) -> jax.Array:
    """x [..., in] @ (weight [out, in] int8 * scale [out]).T, in x's dtype."""
    lead, features = x.shape[:-1], x.shape[-1]
    rows = x.reshape(-1, features)
    contract = (((1,), (1,)), ((), ()))
    if activations == "float":
        y = jax.lax.dot_general(rows, weight.astype(x.dtype), contract) * scale.astype(x.dtype)
        return y.reshape(*lead, -1)
    n = rows.shape[0]
    digits, step = int8_digits(rows)
    acc = jax.lax.dot_general(digits, weight, contract, preferred_element_type=jnp.int32).astype(jnp.float32)
    y = (acc[:n] + acc[n:] / DIGIT_BASE) * step[:, None] * scale
    return y.astype(x.dtype).reshape(*lead, -1)


DIGIT_BASE = 254.0


def int8_digits(rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each row of x [n, k] as two int8 digits: x ~= step * (high + low / 254), so int8 [2n, k] and step [n].

    One int8 digit (per-row absmax / 127) costs SmolLM2 3% perplexity: a few large activations
    leave too few levels for the rest. The second digit quantises the remainder (at most half a
    step) 254 times finer, for about 15 bits in all; the two go through the same int8 matmul as
    2n rows, which reads the weights once (at batch 1 XLA:CPU needs at least two rows anyway:
    one-row int8 dots take a slow matrix-vector loop instead of its int8 GEMM).
    """
    x = rows.astype(jnp.float32)
    amax = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    inverse_step = jnp.where(amax > 0, 127.0 / amax, 1.0)
    scaled = x * inverse_step  # in [-127, 127]
    high = jnp.round(scaled)
    low = jnp.clip(jnp.round((scaled - high) * DIGIT_BASE), -127, 127)
    return jnp.concatenate([high, low]).astype(jnp.int8), 1.0 / inverse_step[:, 0]


class Int8Matrix(nnx.Module):
    """int8 rows [out, in] with one float32 scale per row: the weights of one or more linear layers."""

    def __init__(self, rows: np.ndarray):
        self.weight, self.scale = map(Int8Weight, quantize_rows(rows))

    def matmul(self, x, activations: str):
        return int8_matmul(x, self.weight[...], self.scale[...], activations)


class Int8Linear(nnx.Module):
    """`nnx.Linear` with its kernel in int8 (rows `start:stop` of `matrix`); the bias stays float.

    Layers that read the same input (Llama's q/k/v, gate/up) share one matrix: each computes the
    same stacked matmul and keeps its rows, and XLA's common-subexpression pass leaves one matmul,
    one pass over the weights and one kernel launch instead of three."""

    def __init__(self, base: nnx.Linear, activations: str, matrix: Int8Matrix | None = None, start: int = 0):
        kernel = base.kernel[...]
        self.matrix = matrix if matrix is not None else Int8Matrix(np.asarray(kernel).T)
        self.start, self.stop = start, start + kernel.shape[1]
        self.bias = base.bias
        self.activations = activations
        self.float_dtype = kernel.dtype  # what `dequantize` gives back

    def __call__(self, x):
        y = self.matrix.matmul(x, self.activations)
        if (self.start, self.stop) != (0, y.shape[-1]):
            y = y[..., self.start:self.stop]
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y

    def dequantized_kernel(self) -> jax.Array:
        rows = slice(self.start, self.stop)
        weight = self.matrix.weight[...][rows].astype(jnp.float32) * self.matrix.scale[...][rows, None]
        return weight.T.astype(self.float_dtype)


class Int8Embed(nnx.Module):
    """A tied embedding: float lookups (`embedding` keeps its name for the weight maps), int8 `attend`."""

    def __init__(self, base: Embed, activations: str):
        self.embedding = base.embedding
        self.matrix = Int8Matrix(np.asarray(base.embedding[...]))
        self.activations = activations

    def __call__(self, ids):
        return jnp.take(self.embedding[...], ids, axis=0)

    def attend(self, x):
        return self.matrix.matmul(x, self.activations)


class Int8PromptTunedEmbed(PromptTunedEmbed):
    """A prompt-tuned tied embedding: lookups (virtual tokens included) as before, int8 `attend`."""

    def __init__(self, base: PromptTunedEmbed, activations: str):
        self.embedding, self.virtual_tokens = base.embedding, base.virtual_tokens
        self.matrix = Int8Matrix(np.asarray(base.embedding[...]))
        self.activations = activations

    def attend(self, x):
        return self.matrix.matmul(x, self.activations)


_INT8_EMBEDS = {Embed: Int8Embed, PromptTunedEmbed: Int8PromptTunedEmbed}


class Int8Experts(Experts):
    """A mixture's experts with each projection in int8: `<name>_int8` [experts, out, in] and `<name>_scale`
    [experts, out], an `Int8Matrix` per expert; the grouped matmul multiplies each tile of sorted rows by
    its expert's int8 rows (`int8_matmul`), so the experts, most of a mixture's weights, stay int8 in memory."""

    def __init__(self, base: Experts, activations: str):
        self.names, self.activations = base.names, activations
        self.float_dtype = getattr(base, base.names[0])[...].dtype
        for name in base.names:
            kernel = np.asarray(getattr(base, name)[...])
            if kernel.ndim != 3:
                raise ValueError(f"experts' {name} has shape {kernel.shape}: int8 takes unstacked layers")
            weight, scale = quantize_rows(np.swapaxes(kernel, 1, 2))
            setattr(self, f"{name}_int8", expert_variable(weight, Int8Weight))
            setattr(self, f"{name}_scale", expert_variable(scale, Int8Weight))

    @property
    def num_experts(self) -> int:
        return getattr(self, f"{self.names[0]}_int8")[...].shape[0]

    def _int8(self, name: str) -> tuple[jax.Array, jax.Array]:
        return getattr(self, f"{name}_int8")[...], getattr(self, f"{name}_scale")[...]

    def project(self, name: str, rows: jax.Array, sizes: jax.Array) -> jax.Array:
        def multiply(x, matrix):
            weight, scale = matrix
            return int8_matmul(x, weight, scale, self.activations)

        return grouped_matmul(rows, self._int8(name), sizes, multiply)

    def dequantized(self, name: str) -> jax.Array:
        """Projection `name`'s kernels [experts, in, out] as the int8 rows stand for them."""
        weight, scale = self._int8(name)
        return jnp.swapaxes(weight.astype(jnp.float32) * scale[..., None], 1, 2).astype(self.float_dtype)

    def kernels(self, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
        return tuple(self.dequantized(name).astype(dtype) for name in self.names)  # pyright: ignore[reportReturnType]

    def as_float(self) -> Experts:
        experts, dim, hidden = self.dequantized(self.names[0]).shape
        out = nnx.eval_shape(lambda: Experts(experts, dim, hidden, self.names, rngs=nnx.Rngs(0),
                                             param_dtype=self.float_dtype))
        for name in self.names:
            getattr(out, name).set_value(self.dequantized(name))
        return out


def default_activations() -> str:
    return "int8" if jax.default_backend() == "cpu" else "float"


def quantize_int8(model, *, activations: str | None = None) -> int:
    """Quantize every linear layer (a mixture's router excepted), every mixture's experts and a tied output
    embedding of `model` in place; returns their number.

    The model is put in eval mode: int8 weights are for inference. LoRA adapters must be merged
    first (`merge_lora`): their low-rank update is kept in float only while training. Prompt tuning's
    virtual tokens go on first too (`load_prompt_tuning_adapter`, then this): they stay float."""
    activations = activations or default_activations()
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations={activations!r} is not one of {', '.join(ACTIVATIONS)}")
    modules = list(nnx.iter_modules(model))
    if any(isinstance(m, (LoRALinear, LoRAExperts)) for _, m in modules):
        raise ValueError("merge LoRA adapters (jaxlm.models.lora.merge_lora) before quantizing")
    model.eval()
    routers = {path + ("gate",) for path, m in modules if isinstance(m, SparseMoE)}
    linears = {path: m for path, m in modules if type(m) is nnx.Linear and path not in routers}
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer to quantize")
    for group in _groups_reading_one_input(model, linears):
        kernels = [linears[path].kernel[...] for path in group]
        matrix = Int8Matrix(np.concatenate([np.asarray(k).T for k in kernels]))
        start = 0
        for path, kernel in zip(group, kernels, strict=False):
            _set(model, path, Int8Linear(linears[path], activations, matrix, start))
            start += kernel.shape[1]
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    for path, module in modules:
        if type(module) in _INT8_EMBEDS and tied and _is_output_embedding(model, path):
            _set(model, path, _INT8_EMBEDS[type(module)](module, activations))
    experts = [(path, module) for path, module in modules if type(module) is Experts]
    for path, module in experts:
        _set(model, path, Int8Experts(module, activations))
    return len(linears) + tied + len(experts)


class _Probe:
    """Stands in for a linear layer during one abstract forward pass and notes the input it gets."""

    def __init__(self, base: nnx.Linear, path: tuple, seen: list):
        self.base, self.path, self.seen = base, path, seen

    def __call__(self, x):
        self.seen.append((x, self.path))
        return self.base(x)


def _groups_reading_one_input(model, linears: dict) -> list[list[tuple]]:
    """The linear layers' paths, grouped by the input array they read (shapes only: nothing is computed)."""
    seen: list = []
    for path, linear in linears.items():
        _set(model, path, _Probe(linear, path, seen))
    try:
        jax.eval_shape(lambda: model(jnp.zeros((1, 2), jnp.int32)))
    finally:
        for path, linear in linears.items():
            _set(model, path, linear)
    groups: dict[int, list[tuple]] = {}
    for x, path in seen:  # `seen` keeps every input alive, so no two share an id()
        if path not in (p for g in groups.values() for p in g):
            groups.setdefault(id(x), []).append(path)
    called = {p for g in groups.values() for p in g}
    return list(groups.values()) + [[p] for p in linears if p not in called]


def _is_output_embedding(model, path: tuple) -> bool:
    """The token embedding that a tied model also uses as its output projection."""
    return path == (architecture_of(model).family.token_embedding,)


def is_quantized(model) -> bool:
    return any(isinstance(m, (Int8Linear, Int8Embed, Int8PromptTunedEmbed, Int8Experts))
               for _, m in nnx.iter_modules(model))


def dequantize(model):
    """A float copy of `model` (int8 weights times their scales), e.g. for export."""
    out = nnx.clone(model)
    for path, module in list(nnx.iter_modules(out)):
        if isinstance(module, Int8Linear):
            kernel = module.dequantized_kernel()
            linear = nnx.Linear(*kernel.shape, use_bias=module.bias is not None, param_dtype=kernel.dtype,
                                rngs=nnx.Rngs(0))
            linear.kernel.set_value(kernel)
            if module.bias is not None:
                linear.bias.set_value(module.bias[...])  # pyright: ignore[reportOptionalMemberAccess]  use_bias
            _set(out, path, linear)
        elif isinstance(module, Int8Experts):
            _set(out, path, module.as_float())
        elif isinstance(module, (Int8Embed, Int8PromptTunedEmbed)):
            table = module.embedding[...]
            embed = Embed(*table.shape, param_dtype=table.dtype, rngs=nnx.Rngs(0))
            embed.embedding.set_value(table)
            if isinstance(module, Int8PromptTunedEmbed):
                embed = PromptTunedEmbed(embed, module.virtual_tokens[...])
            _set(out, path, embed)
    return out
