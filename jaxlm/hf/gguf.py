"""Read a llama.cpp GGUF file as a Hugging Face checkpoint: config, tensors, tokenizer.

Quantised tensors are dequantised with the `gguf` package. What differs by family (tensor names,
metadata keys, llama.cpp's own layouts such as permuted Q/K rows or transposed Conv1D weights) is
the family's registry row (`Family.gguf`, see models/weight_map.py's `GGUFLayout`); this module
only reads the file. `gguf_export` writes the other way.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator

import numpy as np

from jaxlm.hf.errors import CheckpointError
from jaxlm.hf.model_code import refuse_custom_code
from jaxlm.models.registry import FAMILIES
from jaxlm.models.weight_map import GGUFLayout, hf_name_of_gguf


def _open(path: str):
    """The file's reader. Loading a model opens it twice (its config first, to pick the family), and parsing the
    metadata is most of the cost (a 49k-token vocabulary is ~300k fields: 2-4 s): the last file read is kept,
    by path, size and modification time, until its tensors have been read (`tensors`)."""
    try:
        stat = os.stat(path)
    except OSError as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
    return _reader(path, os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _reader(path: str, absolute: str, size: int, mtime_ns: int):  # all four: the cache's key
    try:
        return _reader_class()(path)
    except Exception as e:  # the reader raises bare ValueError/IndexError on a damaged file
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


@functools.cache
def _reader_class():
    import gguf

    class PlainViewReader(gguf.GGUFReader):
        """gguf's reader over a plain ndarray view of its memory map. It slices the map once per metadata part
        (~1.2M slices for SmolLM2's 49k-token vocabulary and merges), and every slice of an `np.memmap` runs
        memmap's Python-level `__array_finalize__`: opening the shipped SmolLM2 file took 2.8-3.2 s, 1.0-1.2 s
        over the plain view, the same fields and tensors (tests/test_smollm2.py). The view keeps the map
        alive, as the memmap did, until the reader and its tensors are dropped."""

        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, mapped):  # the one assignment, in GGUFReader.__init__, before any field is read
            self._plain = np.asarray(mapped)

    return PlainViewReader


def _field(reader, key: str, path: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is not None:
            return default
        raise CheckpointError(f"{path}: GGUF metadata key {key!r} is missing")
    return field.contents()


def hf_config(reader, path: str) -> dict:
    arch = _field(reader, "general.architecture", path)
    layout = _layout(arch, path)

    def get(key, default=None):
        return _field(reader, f"{arch}.{key}", path, default)

    vocab = len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else None
    config = layout.hf_config(get, vocab, {t.name: t.data for t in reader.tensors})  # data: views, read on use
    # The layout of the family the metadata names: a "llama" file with experts is Mixtral's.
    _check_sizes(reader, FAMILIES[config["model_type"]].gguf or layout, config, path)
    special = (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("pad_token_id", "padding_token_id"))
    for ours, key in special:
        if f"tokenizer.ggml.{key}" in reader.fields:
            config[ours] = int(reader.fields[f"tokenizer.ggml.{key}"].contents())
    return config


def _layout(arch: str, path: str) -> GGUFLayout:
    """The GGUF layout of the first family whose row has llama.cpp architecture `arch`."""
    layouts = {}
    for family in FAMILIES.values():
        if family.gguf is not None:
            layouts.setdefault(family.gguf.arch, family.gguf)
    if arch not in layouts:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported ({', '.join(layouts)})")
    return layouts[arch]


def _check_sizes(reader, layout: GGUFLayout, config: dict, path: str) -> None:
    """The sizes the metadata claims against the tensors the file holds, before a model of those sizes is
    built: a file that claims 5000 blocks but holds 2 took minutes to fail, one that claims 1e9 never did."""
    arch = layout.arch
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}  # numpy order
    blocks = sorted({int(m.group(1)) for name in shapes if (m := re.match(r"blk\.(\d+)\.", name))})
    claimed = int(_field(reader, f"{arch}.block_count", path))
    if len(blocks) != claimed or (blocks and blocks[-1] != claimed - 1):  # blk.0 .. blk.{claimed-1}, each once
        held = f"blk.{blocks[0]} to blk.{blocks[-1]}" if blocks else "none"
        raise CheckpointError(f"{path}: GGUF metadata {arch}.block_count={claimed}, but the file holds the "
                              f"tensors of {len(blocks)} block(s) ({held})")
    vocab_key = f"{arch}.vocab_size" if f"{arch}.vocab_size" in reader.fields else "tokenizer.ggml.tokens (count)"
    for key, value, tensor, axis in layout.sizes(arch, vocab_key, config):
        if tensor in shapes and shapes[tensor][axis] != value:
            raise CheckpointError(f"{path}: GGUF metadata {key}={value}, but tensor {tensor!r} has shape "
                                  f"{shapes[tensor]} (its size {shapes[tensor][axis]} on that axis)")


def tensors(reader, config: dict, path: str) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, float32 array) for every tensor, dequantised and in HF layout."""
    from gguf.quants import dequantize

    layout = FAMILIES[config["model_type"]].gguf
    for tensor in reader.tensors:
        if tensor.name in layout.ignored:
            continue
        found = hf_name_of_gguf(tensor.name, layout.names)
        if found is None:
            raise CheckpointError(f"{path}: unexpected GGUF tensor {tensor.name!r}")
        hf_name, stacked = found
        try:
            w = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
            if np.may_share_memory(w, tensor.data):  # a float32 tensor is the file's bytes themselves: jax can
                w = w.copy()  # alias a host array, and the view would keep the whole mapped file resident
        except Exception as e:
            raise CheckpointError(f"{path}: cannot dequantise {tensor.name!r} ({tensor.tensor_type.name}): {e}") from e
        w = w.reshape(tuple(int(d) for d in reversed(tensor.shape)))  # GGUF lists dims fastest-first
        w = layout.from_gguf(tensor.name, w, config)
        if stacked is None:
            yield hf_name, w
        else:  # one HF tensor per index of the first axis (llama.cpp's stacked experts)
            yield from ((hf_name.replace("{" + stacked + "}", str(index)), part) for index, part in enumerate(w))
    # The model is built: the kept reader (its ~300k metadata objects and the file's mapped pages, ~0.3 GB for
    # SmolLM2's 98 MB file) would otherwise stay in memory for the whole run, training included.
    _reader.cache_clear()


# llama.cpp pre-tokenizer names whose HF equivalent is byte-level BPE, plus SmolLM's digit split.
_BYTE_LEVEL_PRE = {"gpt2": False, "gpt-2": False, "default": False, "smollm": True}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types that are special tokens in HF


def tokenizer(reader, path: str):
    """The HF fast tokenizer (with chat template) rebuilt from the GGUF metadata.

    Byte-level BPE vocabularies (GPT-2 style, SmolLM) are rebuilt here with `tokenizers`,
    including SmolLM's one-digit-per-token rule; other kinds go through transformers'
    own GGUF converter.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    def meta(key, default=None):
        field = reader.fields.get(f"tokenizer.{key}")
        return default if field is None else field.contents()

    pre = meta("ggml.pre", "default")
    if meta("ggml.model") != "gpt2" or pre not in _BYTE_LEVEL_PRE:
        folder, name = os.path.split(os.path.abspath(path))
        refuse_custom_code(folder)  # transformers reads the folder's own config files beside the GGUF too
        return AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    tokens, types = meta("ggml.tokens"), meta("ggml.token_type", [])
    merges = [tuple(m.split(" ", 1)) for m in meta("ggml.merges", [])]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=bool(meta("ggml.add_space_prefix", False)), use_regex=True)
    split_digits = [pre_tokenizers.Digits(individual_digits=True)] if _BYTE_LEVEL_PRE[pre] else []
    backend.pre_tokenizer = pre_tokenizers.Sequence([*split_digits, byte_level])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False)
         for t, k in zip(tokens, types, strict=False) if k in (_CONTROL, _USER_DEFINED)]
    )
    special = {
        f"{role}_token": tokens[int(meta(f"ggml.{key}"))]
        for role, key in (
            ("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"), ("pad", "padding_token_id")
        )
        if meta(f"ggml.{key}") is not None
    }
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=meta("chat_template"), name_or_path=path,
                                   **special)


def read_config(path: str) -> dict:
    """The HF config.json equivalent of a GGUF file's metadata, without reading tensors."""
    return hf_config(_open(path), path)


def read(path: str):
    """(hf_config, tensor iterator, tokenizer) of a GGUF file."""
    reader = _open(path)
    config = hf_config(reader, path)
    return config, tensors(reader, config, path), tokenizer(reader, path)
