"""The tokenizer half of a GGUF file: a byte-level BPE tokenizer as llama.cpp's metadata describes it.

llama.cpp does not run the Hugging Face pre-tokenizer; it names one it implements
(`tokenizer.ggml.pre`). We recognise the pre-tokenizers it knows by their structure, and refuse
the others rather than write a file that tokenizes differently from the model's training.
"""

from __future__ import annotations

import json

from jaxlm.errors import UserError

# llama.cpp token types (gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# The split regex of Llama 3's tokenizer (llama.cpp's "llama-bpe"), as its tokenizer.json spells it.
LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


def pre_tokenizer_name(backend) -> str:
    """llama.cpp's name for the pre-tokenizer of a `tokenizers.Tokenizer`, or ValueError."""
    spec = json.loads(backend.to_str()).get("pre_tokenizer") or {}
    steps = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # llama.cpp spells GPT-2's with a dash
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # SmolLM: one token per digit, then GPT-2's split
    if kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT:
        return "llama-bpe"
    raise UserError(f"GGUF export: the pre-tokenizer {kinds} is not one llama.cpp implements "
                     "(supported: GPT-2, SmolLM and Llama 3 byte-level BPE)")


def add_tokenizer(writer, tokenizer, config) -> None:
    """Tokens, token types, merges, special token ids, BOS/EOS flags and the chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE" or not _is_byte_level(backend):
        raise UserError("GGUF export needs a byte-level BPE tokenizer (GPT-2 style); "
                         f"{type(tokenizer).__name__} is not one")
    vocab_size = config.vocab_size
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise UserError(f"the tokenizer has token id {max(by_id)}, beyond the model's vocab_size {vocab_size}")
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for i in range(vocab_size):  # ids the tokenizer never produces pad the table, as llama.cpp's converter does
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL if i not in added else CONTROL if added[i].special else USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(backend))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_add_space_prefix(_adds_prefix_space(backend))
    for role, add_id in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                         ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = _special_id(tokenizer, config, role)
        if token_id is not None:
            add_id(token_id)
    add_bos, add_eos = _added_specials(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _is_byte_level(backend) -> bool:
    spec = json.loads(backend.to_str())
    decoder = spec.get("decoder") or {}
    return decoder.get("type") == "ByteLevel" or "ByteLevel" in [
        d.get("type") for d in decoder.get("decoders", [])
    ]


def _adds_prefix_space(backend) -> bool:
    spec = json.loads(backend.to_str()).get("pre_tokenizer") or {}
    steps = spec.get("pretokenizers", [spec])
    return any(s.get("type") == "ByteLevel" and s.get("add_prefix_space") for s in steps)


def _special_id(tokenizer, config, role: str) -> int | None:
    """The tokenizer's id for a role, else the model config's (the first, when it lists several)."""
    token_id = getattr(tokenizer, f"{role}_token_id", None)
    if token_id is None:
        token_id = getattr(config, f"{role}_token_id", None)
    if isinstance(token_id, (list, tuple)):
        token_id = token_id[0] if token_id else None
    return token_id


def _added_specials(tokenizer) -> tuple[bool, bool]:
    """Whether encoding plain text adds BOS in front / EOS at the end: what llama.cpp must repeat."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = full.index(plain[0]) if plain and plain[0] in full else 0
    add_bos = start > 0 and full[0] == tokenizer.bos_token_id
    add_eos = len(full) > start + len(plain) and full[-1] == tokenizer.eos_token_id
    return add_bos, add_eos
