"""`load_pretrained`: an HF model folder or a GGUF file in, a ready NNX module and tokenizer out."""

from __future__ import annotations

import collections
import json
import os
import warnings
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.hf import gguf
from jaxlm.hf.errors import CheckpointError
from jaxlm.hf.model_code import refuse_custom_code
from jaxlm.models import Architecture, architecture_for
from jaxlm.models.weight_map import dotted, hf_to_ours, is_ignored, ours_to_hf


def load_pretrained(
    path: str | os.PathLike,
    dtype=jnp.float32,
    *,
    architecture: str | None = None,
    config_overrides: dict | None = None,
    progress: bool = False,
    quantize: str | None = None,
):
    """Load `(model, tokenizer)` from an HF folder (safetensors, sharded, or pytorch_model.bin) or a .gguf file.

    Parameters are stored in `dtype`; the computation follows the parameters' dtype.
    The tokenizer is a transformers fast tokenizer, or None if the folder has none.
    The model is returned in eval mode (dropout off); call `model.train()` to fine-tune.

    `architecture` puts a new head on a base checkpoint, e.g. "BertForTokenClassification"
    on MiniLM with `config_overrides={"id2label": {...}}`: parameters the checkpoint lacks
    are then randomly initialised only if they belong to the new head.

    `quantize="int8"` stores the linear layers (and a tied output projection) as int8 with
    per-output-channel scales, for faster generation on CPU (see `jaxlm.models.quant`).
    """
    path = os.fspath(path)
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize={quantize!r}: only 'int8' (or None) is supported")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model folder or .gguf file")
    if path.endswith(".gguf"):
        hf_config, tensors, tokenizer = gguf.read(path)
        source = path
    else:
        hf_config = read_config(path)
        tensors = read_tensors(path)
        tokenizer = read_tokenizer(path)
        source = os.path.join(path, "config.json")
    base_arch = _architecture(hf_config, source)
    hf_config = {**hf_config, **(config_overrides or {})}
    if architecture is not None:
        hf_config["architectures"] = [architecture]
    arch = _architecture(hf_config, source)
    config = _family_config(arch, hf_config, source)
    if progress:
        from tqdm.auto import tqdm

        tensors = tqdm(tensors, desc=f"loading {os.path.basename(path)}", unit=" tensors")
    new_head = arch.name != base_arch.name
    model = build_model(arch, config, tensors, dtype, source=path, init_missing_head=new_head)
    if quantize == "int8":
        from jaxlm.models.quant import quantize_int8

        quantize_int8(model)
    model.eval()
    return model, tokenizer


def read_model_config(path: str | os.PathLike):
    """The model's config (its family's config class) from config.json or the GGUF metadata; no weights read."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model folder or .gguf file")
    if path.endswith(".gguf"):
        hf_config, source = gguf.read_config(path), path
    else:
        hf_config, source = read_config(path), os.path.join(path, "config.json")
    return _family_config(_architecture(hf_config, source), hf_config, source)


def _architecture(hf_config: dict, source: str) -> Architecture:
    try:
        return architecture_for(hf_config, source)
    except ValueError as e:  # an unknown model_type: the message names the file
        raise CheckpointError(str(e)) from None


def _family_config(arch: Architecture, hf_config: dict, source: str):
    try:
        return arch.family.config.from_hf(hf_config)
    except KeyError as e:
        raise CheckpointError(f"{source}: required field {e.args[0]!r} is missing") from e
    except CheckpointError:
        raise
    except ValueError as e:  # a setting the family does not support
        raise CheckpointError(f"{source}: {str(e).removeprefix('config.json: ')}") from None


def build_model(
    arch: Architecture,
    config,
    tensors: Iterable[tuple[str, np.ndarray]],
    dtype,
    *,
    source: str,
    init_missing_head: bool = False,
):
    """Instantiate `arch` without random init and fill its parameters from (HF name, array) pairs."""
    def make():
        return arch.model_cls(config, rngs=nnx.Rngs(0), param_dtype=dtype)

    abstract = nnx.eval_shape(make)
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):  # dropout RNG streams: tiny, and jit lets XLA skip the random weights
        rest = jax.jit(lambda: nnx.state(make(), nnx.Not(nnx.Param)))()
    expected = {dotted(p): v for p, v in nnx.to_flat_state(params)}
    loaded: dict[str, jax.Array] = {}
    slices: dict[str, dict[int, jax.Array]] = collections.defaultdict(dict)  # stacked parameters, by index
    unused: list[str] = []
    for name, array in tensors:
        if is_ignored(arch.family, name):
            continue
        found = hf_to_ours(arch.family, name, expected.keys())
        if found is None and init_missing_head:
            unused.append(name)  # the old head's weights (e.g. BERT's pooler) when a new head goes on
            continue
        if found is None:
            raise CheckpointError(f"{source}: unexpected tensor {name!r} for {arch.name}")
        ours, transpose, index = found
        array = np.asarray(array)
        want = tuple(expected[ours].get_value().shape)
        count, want = (None, want) if index is None else (want[0], want[1:])  # one slice of a stacked parameter
        want_in_file = want[::-1] if transpose else want  # the message speaks the file's layout
        if tuple(array.shape) != want_in_file or (count is not None and not 0 <= index < count):
            where = "" if index is None else f" (index {index} of {count})"
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(array.shape)}{where}, "
                                  f"expected {want_in_file} for {arch.name}")
        array = jnp.asarray(array.T if transpose else array, dtype=dtype)
        if index is None:
            loaded[ours] = array
        else:
            slices[ours][index] = array
    for ours, parts in slices.items():
        if len(parts) == expected[ours].get_value().shape[0]:  # every slice present: else reported missing below
            loaded[ours] = jnp.stack([parts[i] for i in range(len(parts))])
    missing = [p for p in expected if p not in loaded]
    if missing and init_missing_head and all(p.startswith(arch.family.head_modules) for p in missing):
        fresh = {dotted(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(make(), nnx.Param))}
        loaded.update({p: fresh[p] for p in missing})
        warnings.warn(f"{source}: new {arch.name} head initialised randomly: {', '.join(missing)}", stacklevel=2)
        missing = []
    if unused:
        warnings.warn(f"{source}: tensors not used by {arch.name}: {', '.join(unused)}", stacklevel=2)
    if missing:
        names = ", ".join(repr(ours_to_hf(arch.family, p)[0]) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{source}: missing tensor {names}{more} for {arch.name}")
    flat = [(p, v.replace(loaded[dotted(p)])) for p, v in nnx.to_flat_state(params)]
    return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


def read_hf_config(path: str) -> dict:
    """The HF config fields of a model folder or .gguf file, without reading any weights."""
    return gguf.read_config(path) if path.endswith(".gguf") else read_config(path)


def read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no config.json (is this a Hugging Face model folder?)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e


def read_tensors(folder: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) pairs from safetensors (single or sharded) or, failing that, pytorch_model.bin."""
    index = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(single):
        yield from _safetensors(single)
    elif os.path.exists(index):
        for shard in _shards(index):
            yield from _safetensors(os.path.join(folder, shard))
    elif os.path.exists(os.path.join(folder, "pytorch_model.bin")):
        yield from _torch_bin(os.path.join(folder, "pytorch_model.bin"))
    elif os.path.exists(os.path.join(folder, "pytorch_model.bin.index.json")):
        for shard in _shards(os.path.join(folder, "pytorch_model.bin.index.json")):
            yield from _torch_bin(os.path.join(folder, shard))
    else:
        raise CheckpointError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _shards(index_path: str) -> list[str]:
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index_path}: not a valid shard index ({e})") from e
    return sorted(set(weight_map.values()))


def _safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    from safetensors import safe_open

    try:
        # framework="flax" reads bfloat16 too, which plain numpy cannot.
        with safe_open(path, framework="flax") as f:
            for name in f.keys():  # noqa: SIM118  safe_open has keys(), not iteration
                yield name, np.asarray(f.get_tensor(name))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: shard listed in the index is missing") from None
    except Exception as e:
        if isinstance(e, CheckpointError) or type(e).__name__ != "SafetensorError":
            raise
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e


def _torch_bin(path: str) -> Iterator[tuple[str, np.ndarray]]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: reading pytorch_model.bin needs torch (pip install torch)") from None
    try:
        # weights_only=True: a checkpoint is data; never unpickle arbitrary objects from it.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read as a torch state dict ({type(e).__name__}: {e})") from e
    for name, tensor in state.items():
        yield name, tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()


def read_tokenizer(folder: str):
    refuse_custom_code(folder)
    files = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
    if not any(os.path.exists(os.path.join(folder, f)) for f in files):
        return None
    from transformers import AutoTokenizer

    # trust_remote_code=False: never import Python from the folder, and never ask on stdin whether to
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
