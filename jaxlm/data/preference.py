"""Preference pairs ({prompt, chosen, rejected}) -> fixed-length rows, tokenized as TRL's `DPOTrainer` does.

TRL (1.16, `DPOTrainer._prepare_dataset` and `DataCollatorForPreference`):

* standard form (strings): the tokenizer's EOS text is appended to each completion that does not end
  with it; prompt, prompt + chosen and prompt + rejected are tokenized apart, with the tokenizer's
  special tokens;
* conversational form (message lists): the prompt rendered by the chat template with the generation
  prompt, prompt + chosen and prompt + rejected rendered whole, each tokenized without special tokens
  (the template writes them);
* the completion starts where the prompt's tokens and the whole's first differ (usually the prompt's
  end); each sequence keeps its first `seq_len + 1` tokens (TRL's `max_length`, `keep_start`).

A pair is one row of shape [2, seq_len] per key (chosen first, rejected second), one sequence per row from
position 0, as `compute.preference` reads it: `input_ids` (the tokens but the last), `targets` (the tokens
but the first), `completion_mask` (1 where a target is a completion token) and `attention_mask` (1 on the
sequence, 0 on padding). A pair whose prompt fills the row has no completion target; it counts for
nothing (TRL drops it).
"""

from __future__ import annotations

import numpy as np

from jaxlm.data.encode import TokenizerPool, encode_batch
from jaxlm.tasks import PAIR_KEYS
from jaxlm.text.chat_template import ChatTemplate, ChatTemplateError


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PreferenceEncoder:
    """Rows of preference pairs for the dpo, orpo and simpo tasks (see the module docstring)."""

    ROW_SHAPES = dict.fromkeys(PAIR_KEYS, "pair")

    def __init__(self, tokenizer, *, seq_len: int):
        self.seq_len = seq_len
        self.eos_text = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.chat_template, self._template_error = None, None
        try:
            self.chat_template = ChatTemplate.from_tokenizer(tokenizer)
        except ChatTemplateError as e:  # raised when a conversational record needs it
            self._template_error = e
        self._tokenizers = TokenizerPool(tokenizer)

    def texts(self, data: dict) -> tuple[list[str], bool]:
        """([prompt, prompt + chosen, prompt + rejected] as text, whether the tokenizer adds its special tokens)."""
        prompt, chosen, rejected = data["prompt"], data["chosen"], data["rejected"]
        if isinstance(prompt, str):
            if self.eos_text:
                chosen, rejected = (c if c.endswith(self.eos_text) else c + self.eos_text for c in (chosen, rejected))
            return [prompt, prompt + chosen, prompt + rejected], True
        if self._template_error is not None:
            raise self._template_error
        if self.chat_template is None:
            raise ChatTemplateError("conversational preference records need a tokenizer with a chat_template")
        render = self.chat_template.render
        return [render(prompt, add_generation_prompt=True), render(prompt + chosen), render(prompt + rejected)], False

    def token_ids(self, records: list[tuple[str, dict]]) -> list[tuple[list[int], list[int], list[int]]]:
        """Per record, the token ids of (prompt, prompt + chosen, prompt + rejected), untruncated."""
        texts = [self.texts(data) for _, data in records]
        out: list = [None] * len(texts)
        with self._tokenizers.borrow() as tokenizer:
            for special in (True, False):
                batch = [i for i, (_, s) in enumerate(texts) if s == special]
                if batch:
                    flat = [text for i in batch for text in texts[i][0]]
                    encoded = encode_batch(tokenizer, flat, add_special_tokens=special)
                    for j, i in enumerate(batch):
                        out[i] = tuple(ids for ids, _ in encoded[3 * j:3 * j + 3])
        return out

    def encode(self, records: list[tuple[str, dict]]) -> dict[str, np.ndarray]:
        rows = {k: np.zeros((len(records), 2, self.seq_len), np.int32) for k in PAIR_KEYS}
        rows["input_ids"][:] = self.pad_id
        for r, (prompt, chosen, rejected) in enumerate(self.token_ids(records)):
            start = min(common_prefix_length(prompt, chosen), common_prefix_length(prompt, rejected))
            for side, whole in enumerate((chosen, rejected)):
                ids = whole[:self.seq_len + 1]
                length = len(ids) - 1
                if length <= 0:
                    continue
                rows["input_ids"][r, side, :length] = ids[:-1]
                rows["targets"][r, side, :length] = ids[1:]
                rows["completion_mask"][r, side, max(start - 1, 0):length] = 1
                rows["attention_mask"][r, side, :length] = 1
        return rows
