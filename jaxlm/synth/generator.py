"""The model side of synthesis: one loaded model that turns a batch of prompts into outputs.

A worker (the local process, or each Ray actor) builds one :class:`Generator` and keeps it:
the model is loaded and its programs compiled once. Generation is `jaxlm.generate`
(batched, jitted prefill and on-device decode with a KV cache).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jaxlm import model_paths
from jaxlm.synth.config import SynthError


@dataclasses.dataclass
class Output:
    text: str
    finish: str  # "stop" or "length" (hit max_new_tokens)
    prompt_tokens: int
    new_tokens: int
    seconds: float  # this output's share of the batch's prefill + decode time (compile excluded)
    logprobs: list[float]  # the model's log-prob of each new token


def derive_seed(*parts: int) -> int:
    """A generation seed fixed by (run seed, batch, step): the same wherever the batch runs."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class Generator:
    """A model and tokenizer, loaded once; call it with prompts (chats or raw text)."""

    def __init__(self, model: str, quantize: str | None = None):
        from jaxlm import load_pretrained

        self.path = model_paths.resolve(model)
        self.name = os.path.basename(os.path.normpath(self.path))
        self.model, self.tokenizer = load_pretrained(self.path, quantize=quantize)
        if self.tokenizer is None:
            raise SynthError(f"--model {model}: the model has no tokenizer")
        from jaxlm.models.contract import is_causal_lm

        if not is_causal_lm(self.model):
            raise SynthError(f"--model {model}: a {type(self.model).__name__} cannot generate text; synth needs "
                             "a causal LM")
        vocabulary = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        self._line_ends = [i for i, piece in enumerate(vocabulary) if "\n" in piece]

    def close(self) -> None:
        """Nothing to release (a `remote.RemoteGenerator` closes its connections)."""

    def __call__(self, prompts: list, *, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int, one_line: bool = False) -> list[Output]:
        """One output per prompt. ``one_line`` stops each at its first line break (and cuts there)."""
        from jaxlm.sampling import generate

        result = generate(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p if temperature > 0 else None,
                          seed=seed, batch_size=max(len(prompts), 1),
                          stop_token_ids=self._line_ends if one_line else None, return_logprobs=True)
        seconds = result.prefill_seconds + result.decode_seconds
        total = max(result.new_tokens, 1)
        outputs = []
        for i, ids in enumerate(result.token_ids):
            text = result.texts[i]
            if one_line:  # the stop token may carry text before its line break
                text = self.tokenizer.decode(ids, skip_special_tokens=True).split("\n")[0]
            outputs.append(Output(text.strip(), result.finish_reasons[i], result.prompt_lengths[i],
                                  len(ids), seconds * len(ids) / total, result.logprobs[i]))
        return outputs
