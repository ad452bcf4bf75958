"""Greedy answers of a causal LM to chat prompts, and the general-ability check.

The general check asks a fixed set of everyday questions (`general_prompts.json`, written for
jaxlm and in none of its training corpora) and scores the answers for degeneration: a fine-tune
that has broken the model loops ("I am a man who is a man who is ...") until the token limit,
which held-out loss alone does not show.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence

from jaxlm.eval import metrics

GENERAL_PROMPTS = os.path.join(os.path.dirname(__file__), "general_prompts.json")


@dataclasses.dataclass
class Answers:
    texts: list[str]
    finish_reasons: list[str]  # "stop" (end of turn) or "length" (the token limit)


Ask = Callable[[list, int], Answers]  # (chats or strings, max_new_tokens) -> greedy answers


def local_asker(model, tokenizer) -> Ask:
    """Answers from a loaded model (`answer`); `jaxlm.eval.served` asks a server instead."""
    return lambda prompts, max_new_tokens: answer(model, tokenizer, prompts, max_new_tokens)


def answer(model, tokenizer, prompts: Sequence, max_new_tokens: int, *, batch_size: int = 32) -> Answers:
    """Greedy answers (jaxlm's sampler) to chats or plain strings; LoRA adapters are merged first."""
    from jaxlm.models.lora import has_lora, merge_lora
    from jaxlm.sampling import generate

    if not prompts:
        return Answers([], [])
    model = merge_lora(model) if has_lora(model) else model
    result = generate(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, temperature=0.0,
                      batch_size=batch_size)
    return Answers([t.strip() for t in result.texts], list(result.finish_reasons))


def general_prompts() -> list[str]:
    with open(GENERAL_PROMPTS, encoding="utf-8") as f:
        return json.load(f)


def general_check(ask: Ask, chat: bool, max_new_tokens: int) -> dict:
    """{"scores": degeneration scores, "answers": [{"prompt", "answer", "finish_reason"}]} on the general
    prompts, asked as chats if `chat` (the model has a chat template)."""
    prompts = general_prompts()
    asked = [[{"role": "user", "content": p}] for p in prompts] if chat else prompts
    got = ask(asked, max_new_tokens)
    return {"scores": metrics.degeneration_scores(got.texts, got.finish_reasons),
            "answers": [{"prompt": p, "answer": a, "finish_reason": r}
                        for p, a, r in zip(prompts, got.texts, got.finish_reasons, strict=False)]}
