"""Tiny checkpoints, tokenizers and data files for the training tests (written on the fly)."""

from __future__ import annotations

import json
import os

from hf_checkpoints import tiny_bert, tiny_llama
from jaxlm.train.config import load_config

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = ("the cat sat on a mat and the dog ran to the park while birds sang songs about rain sun "  # noqa: SIM905
         "what is your name my name is bob how are you i am fine thanks hello hi there good day").split()


def llama_tokenizer(vocab_size: int = 320):
    """Byte-level BPE with ids 0 <pad>, 1 <s>, 2 <|im_end|> (eos), 3 <|im_start|> and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>",
                                   chat_template=CHAT_TEMPLATE)


def write_tiny_llama(path, **kwargs) -> str:
    tiny_llama(path, **kwargs)
    llama_tokenizer().save_pretrained(path)
    return str(path)


def bert_tokenizer(path):
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = [*specials, *sorted(set(WORDS)), "##s", "##ed", "paris", "london", "alice"]
    vocab_file = os.path.join(path, "vocab.txt")
    os.makedirs(path, exist_ok=True)
    with open(vocab_file, "w") as f:
        f.write("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab_file)


def write_tiny_bert(path) -> str:
    tiny_bert(path)
    bert_tokenizer(str(path)).save_pretrained(path)
    return str(path)


def write_sft_jsonl(path, n: int = 48, bad_line: bool = False) -> str:
    """Chats where the assistant repeats a fixed answer to each greeting: quickly learnable."""
    rows = []
    for i in range(n):
        greeting = WORDS[i % len(WORDS)]
        if i % 2:
            rows.append({"messages": [{"role": "user", "content": f"hello {greeting}"},
                                      {"role": "assistant", "content": f"hi there {greeting} good day"}]})
        else:
            rows.append({"prompt": f"what is {greeting}", "completion": f"my name is {greeting}"})
    lines = [json.dumps(r) for r in rows]
    if bad_line:
        lines.insert(3, '{"messages": [oops')
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def as_table(records: list[dict]):
    """`records` as an Arrow table built column by column, so every row has every column (null where a
    record lacks it), as real files do."""
    import pyarrow as pa

    names = list(dict.fromkeys(name for record in records for name in record))
    return pa.table({name: [record.get(name) for record in records] for name in names})


def write_parquet(path, records: list[dict]) -> str:
    import pyarrow.parquet as pq

    pq.write_table(as_table(records), path, row_group_size=2)  # several row groups: reading crosses them
    return str(path)


def write_text(path, n_docs: int = 12) -> str:
    os.makedirs(path, exist_ok=True)
    for d in range(n_docs):
        words = [WORDS[(d * 7 + i * 3) % len(WORDS)] for i in range(40 + d)]
        with open(os.path.join(path, f"doc{d:02d}.txt"), "w") as f:
            f.write(" ".join(words) + "\n")
    return str(path)


def write_conll(path, n: int = 40) -> str:
    sentences = []
    for i in range(n):
        name = ["alice", "bob"][i % 2]
        city = ["paris", "london"][i % 2]
        sentences.append([(name, "B-person"), ("sat", "O"), ("in", "O") if False else ("on", "O"),
                          (city, "B-loc"), (WORDS[i % len(WORDS)], "O")])
    with open(path, "w") as f:
        f.write("\n\n".join("\n".join(f"{t}\t{g}" for t, g in s) for s in sentences) + "\n")
    return str(path)


def tiny_config(tmp_path, model_dir: str, task: str, train: list[str], *overrides: str, eval_sources=()):
    """A config for a few-second run on a tiny model; `overrides` are dotted.key=value strings."""
    base = [
        f"model.path={model_dir}", f"task={task}", f"output_dir={tmp_path / 'run'}",
        "train.steps=8", "train.batch_size=4", "train.seq_len=32", "train.warmup_steps=2",
        "train.learning_rate=0.01", "train.log_every=2", "eval.every=4", "eval.steps=2", "eval.sample_prompts=0",
        "checkpoint.every=4", "model.lora.rank=0", "data.shuffle_buffer=64",
        "data.train=" + json.dumps([{"path": p} for p in train]),
        "data.eval=" + json.dumps([{"path": p} for p in eval_sources]),
    ]
    if not eval_sources:
        base.append("data.eval_fraction=0.25")
    return load_config(None, [*base, *overrides])


def with_devices(devices: int) -> str:
    """XLA_FLAGS for a fresh process with `devices` fake CPU devices, keeping the flags the tests set (conftest)."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
