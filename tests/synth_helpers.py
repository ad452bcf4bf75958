"""A tiny random chat model whose tokenizer knows English words, for the synthesis tests.

Its outputs are random word salad: enough for tests of the machinery (batches, filters,
resume, engines), where what the model says does not matter.
"""

from __future__ import annotations

import json
import os

import transformers

from hf_checkpoints import tiny_llama

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def english_lines() -> list[str]:
    from jaxlm.synth.self_instruct import default_seeds_path

    with open(default_seeds_path(), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [f"{r['prompt']}\n{r['completion']}" for r in rows]


def tiny_synth_model(path) -> str:
    """A tiny Llama (vocab 320) with a byte-level BPE of ~300 English pieces and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(english_lines() * 3, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<|im_start|>", eos_token="<|im_end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tiny_llama(path)
    tokenizer.save_pretrained(path)
    return os.fspath(path)


def lines(path) -> list[dict]:
    """The JSON lines of a run's output file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def without_timing(records: list[dict]) -> list[dict]:
    """Records with their generation time removed: the one field two identical runs do not share."""
    for record in records:
        record["provenance"].pop("generation_seconds")
    return records
