"""Prompts built from records: a chat's question and reference answer, few-shot examples,
and classification asked of a generative model.

A few-shot prompt puts K solved examples before the question as earlier chat turns (the
examples are drawn once, with a fixed seed, from a train split and shared by every question),
so a chat model sees them as a conversation it already had.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from jaxlm.errors import UserError

Message = dict  # {"role": ..., "content": ...}


def prompt_of(record) -> dict | None:
    """{"messages": the turns before the first assistant turn, "reference": that turn}, or None
    when the record holds no answer (plain text, NER)."""
    if record.kind == "messages":
        messages = record.data["messages"]
        for i, m in enumerate(messages):
            if m["role"] == "assistant" and i > 0:
                return {"messages": messages[:i], "reference": m["content"]}
    if record.kind == "prompt_completion":
        return {"messages": [{"role": "user", "content": record.data["prompt"]}],
                "reference": record.data["completion"]}
    return None


def draw_shots(examples: Sequence, k: int, seed: int) -> list:
    """`k` examples drawn without replacement with `seed` (the same ones on every run)."""
    if k > len(examples):
        raise UserError(f"--few-shot {k}: the shot source has only {len(examples)} usable example(s) "
                        "(a question with its answer); lower --few-shot or give a larger --shots-from")
    return random.Random(seed).sample(list(examples), k)


def with_shots(messages: list[Message], shots: Sequence[dict]) -> list[Message]:
    """The question `messages` after the shots' (question, answer) turns; a leading system turn stays first."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = [t for shot in shots for t in (*[m for m in shot["messages"] if m["role"] != "system"],
                                           {"role": "assistant", "content": shot["reference"]})]
    return [*system, *turns, *messages[len(system):]]


# --- classification by generation ---------------------------------------------------------


def classification_question(text: str, label_names: Sequence[str]) -> list[Message]:
    return [{"role": "user", "content": f"Classify the text as one of: {', '.join(label_names)}. "
                                        f"Answer with the label only.\n\nText: {text}"}]


def classification_prompt(text: str, label_names: Sequence[str], shots: Sequence[tuple[str, str]] = ()) -> list:
    """A chat asking for the label of `text`; `shots` are (text, label name) pairs answered before it."""
    solved = [{"messages": classification_question(t, label_names), "reference": label} for t, label in shots]
    return with_shots(classification_question(text, label_names), solved)


def parse_label(answer: str, label_names: Sequence[str]) -> str | None:
    """The label the answer names first (whole word, any case), or None when it names none."""
    found = []
    for name in label_names:
        match = re.search(rf"(?<!\w){re.escape(name)}(?!\w)", answer, flags=re.IGNORECASE)
        if match:
            found.append((match.start(), -len(name), name))
    return min(found)[2] if found else None
