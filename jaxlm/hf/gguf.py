"""Read a llama.cpp GGUF file (Llama, Qwen2, Qwen3 or GPT-2) as a Hugging Face checkpoint: config, tensors, tokenizer.

Quantised tensors are dequantised with the `gguf` package. llama.cpp permutes the rows
of Llama's Q and K projections for its interleaved RoPE (not Qwen's: llama.cpp runs those with
rotate-half RoPE, as HF does) and stores GPT-2's Conv1D weights
transposed; we undo both to get HF's layout. `gguf_export` writes the other way.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from jaxlm.hf.errors import CheckpointError
from jaxlm.models.weight_map import rename

# GGUF tensor name -> HF tensor name ({p} is "weight" or "bias"), per architecture.
LLAMA_NAMES = (
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
    ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("blk.{i}.attn_q.{p}", "model.layers.{i}.self_attn.q_proj.{p}"),
    ("blk.{i}.attn_k.{p}", "model.layers.{i}.self_attn.k_proj.{p}"),
    ("blk.{i}.attn_v.{p}", "model.layers.{i}.self_attn.v_proj.{p}"),
    ("blk.{i}.attn_output.{p}", "model.layers.{i}.self_attn.o_proj.{p}"),
    ("blk.{i}.ffn_gate.{p}", "model.layers.{i}.mlp.gate_proj.{p}"),
    ("blk.{i}.ffn_up.{p}", "model.layers.{i}.mlp.up_proj.{p}"),
    ("blk.{i}.ffn_down.{p}", "model.layers.{i}.mlp.down_proj.{p}"),
)
QWEN_NAMES = (  # Qwen2's q/k/v biases are LLAMA_NAMES' {p}; Qwen3 adds its query/key norms
    *LLAMA_NAMES,
    ("blk.{i}.attn_q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight"),
    ("blk.{i}.attn_k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight"),
)
GPT2_NAMES = (
    ("token_embd.weight", "transformer.wte.weight"),
    ("position_embd.weight", "transformer.wpe.weight"),
    ("output_norm.{p}", "transformer.ln_f.{p}"),
    ("blk.{i}.attn_norm.{p}", "transformer.h.{i}.ln_1.{p}"),
    ("blk.{i}.attn_qkv.{p}", "transformer.h.{i}.attn.c_attn.{p}"),
    ("blk.{i}.attn_output.{p}", "transformer.h.{i}.attn.c_proj.{p}"),
    ("blk.{i}.ffn_norm.{p}", "transformer.h.{i}.ln_2.{p}"),
    ("blk.{i}.ffn_up.{p}", "transformer.h.{i}.mlp.c_fc.{p}"),
    ("blk.{i}.ffn_down.{p}", "transformer.h.{i}.mlp.c_proj.{p}"),
)
_GPT2_TRANSPOSED = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")  # Conv1D [in, out]
# llama.cpp's precomputed RoPE factors (we derive them from the config); GPT-2's copy of its tied head.
IGNORED = {"llama": ("rope_freqs.weight",), "gpt2": ("output.weight",)}
_PERMUTED_QK = ("llama",)  # the architectures whose Q/K rows llama.cpp interleaves


def _open(path: str):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises bare ValueError/IndexError on a damaged file
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def _field(reader, key: str, path: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is not None:
            return default
        raise CheckpointError(f"{path}: GGUF metadata key {key!r} is missing")
    return field.contents()


def hf_config(reader, path: str) -> dict:
    arch = _field(reader, "general.architecture", path)
    if arch not in _CONFIGS:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported ({', '.join(_CONFIGS)})")

    def get(key, default=None):
        return _field(reader, f"{arch}.{key}", path, default)

    vocab = len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else None
    config = _CONFIGS[arch](get, vocab, {t.name for t in reader.tensors})
    special = (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("pad_token_id", "padding_token_id"))
    for ours, key in special:
        if f"tokenizer.ggml.{key}" in reader.fields:
            config[ours] = int(reader.fields[f"tokenizer.ggml.{key}"].contents())
    return config


def _llama_config(get, vocab, names) -> dict:
    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": int(get("vocab_size", vocab)),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": int(get("rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": "blk.0.ffn_up.bias" in names,
    }
    if get("rope.scaling.type", "none") == "linear":
        config["rope_scaling"] = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    return config


def _gpt2_config(get, vocab, names) -> dict:
    del names
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": vocab,
        "n_embd": int(get("embedding_length")),
        "n_inner": int(get("feed_forward_length")),
        "n_layer": int(get("block_count")),
        "n_head": int(get("attention.head_count")),
        "n_positions": int(get("context_length")),
        "layer_norm_epsilon": float(get("attention.layer_norm_epsilon")),
    }


def _qwen_config(model_type: str, architecture: str):
    def config(get, vocab, names) -> dict:
        out = dict(_llama_config(get, vocab, names), model_type=model_type, architectures=[architecture])
        out["head_dim"] = int(get("attention.key_length", out["head_dim"]))  # Qwen3's own head size
        return out

    return config


_CONFIGS = {"llama": _llama_config, "qwen2": _qwen_config("qwen2", "Qwen2ForCausalLM"),
            "qwen3": _qwen_config("qwen3", "Qwen3ForCausalLM"), "gpt2": _gpt2_config}
_NAMES = {"llama": LLAMA_NAMES, "qwen2": QWEN_NAMES, "qwen3": QWEN_NAMES, "gpt2": GPT2_NAMES}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensors(reader, config: dict, path: str) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, float32 array) for every tensor, dequantised and in HF layout."""
    from gguf.quants import dequantize

    family = config["model_type"]
    for tensor in reader.tensors:
        if tensor.name in IGNORED.get(family, ()):
            continue
        hf_name = next((n for src, dst in _NAMES[family] if (n := rename(tensor.name, src, dst))), None)
        if hf_name is None:
            raise CheckpointError(f"{path}: unexpected GGUF tensor {tensor.name!r}")
        try:
            w = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot dequantise {tensor.name!r} ({tensor.tensor_type.name}): {e}") from e
        w = w.reshape(tuple(int(d) for d in reversed(tensor.shape)))  # GGUF lists dims fastest-first
        if ".q_proj." in hf_name and family in _PERMUTED_QK:
            w = _unpermute(w, config["num_attention_heads"])
        elif ".k_proj." in hf_name and family in _PERMUTED_QK:
            w = _unpermute(w, config["num_key_value_heads"])
        elif tensor.name.endswith(_GPT2_TRANSPOSED) and family == "gpt2":
            w = w.T
        yield hf_name, w


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
        return AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokens, types = meta("ggml.tokens"), meta("ggml.token_type", [])
    merges = [tuple(m.split(" ", 1)) for m in meta("ggml.merges", [])]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=bool(meta("ggml.add_space_prefix", False)), use_regex=True)
    split_digits = [pre_tokenizers.Digits(individual_digits=True)] if _BYTE_LEVEL_PRE[pre] else []
    backend.pre_tokenizer = pre_tokenizers.Sequence([*split_digits, byte_level])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k in (_CONTROL, _USER_DEFINED)]
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
