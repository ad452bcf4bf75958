"""Paraphrase-by-model: an OFFLINE batch step that writes a new JSONL file.

Generating with a model is far too slow for the input pipeline, so this runs
once, before training: each input record's input text (the ``text``, the
``prompt`` of a prompt/completion pair, or the user turns of a conversation)
is rewritten by the model, and a copy of the record with the paraphrase is
written out with its provenance::

    {"text": "...", "provenance": {"paraphrase_of": {"path": "in.jsonl", "line": 3},
     "original": "...", "model": "...", "temperature": 0.7, "seed": 0}}

Targets (completions, assistant turns) are kept as they are. The output is an
ordinary source: add it to ``data.train`` with a weight.

Usage::

    from jaxlm.data.paraphrase import paraphrase_file
    model, tokenizer = jaxlm.load_pretrained(...)
    paraphrase_file("train.jsonl", "train.paraphrased.jsonl", model, tokenizer, generate=jaxlm.generate,
                    model_name="SmolLM2-135M-Instruct", temperature=0.7, seed=0)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from jaxlm.data.records import Record, read_records

INSTRUCTION = ("Rewrite the following text so that it means the same but uses different "
               "words. Reply with the rewritten text only.\n\n{text}")


def inputs_of(record: Record) -> list[str]:
    """The texts of a record that get paraphrased (never its targets)."""
    if record.kind == "text":
        return [record.data["text"]]
    if record.kind == "prompt_completion":
        return [record.data["prompt"]]
    if record.kind == "messages":
        return [m["content"] for m in record.data["messages"] if m["role"] == "user"]
    return []  # NER sentences are augmented with ner_augment instead


def with_inputs(record: Record, texts: list[str]) -> dict:
    """A copy of the record's data with its inputs replaced by ``texts``."""
    data = dict(record.data)
    if record.kind == "text":
        data["text"] = texts[0]
    elif record.kind == "prompt_completion":
        data["prompt"] = texts[0]
    elif record.kind == "messages":
        replacements = iter(texts)
        data["messages"] = [{**m, "content": next(replacements)} if m["role"] == "user" else m
                            for m in record.data["messages"]]
    return data


def _prompt(tokenizer, text: str):
    """A chat (rendered by generate with the chat template) or, without a template, a string."""
    instruction = INSTRUCTION.format(text=text)
    if getattr(tokenizer, "chat_template", None):
        return [{"role": "user", "content": instruction}]
    return instruction + "\n\n"


def _texts(result) -> list[str]:
    # jaxlm.generate returns a GenerationResult (``.texts``); stand-ins may return a list.
    return list(result.texts if hasattr(result, "texts") else result)


def paraphrase_file(in_path: str, out_path: str, model, tokenizer, *, generate: Callable,
                    max_new_tokens: int = 128, temperature: float = 0.7, seed: int = 0, batch_size: int = 16,
                    model_name: str = "", fields: dict | None = None) -> int:
    """Writes paraphrased copies of ``in_path``'s records to ``out_path``; returns the count.

    ``generate`` is ``jaxlm.generate(model, tokenizer, prompts, max_new_tokens=, temperature=,
    seed=)`` or a stand-in (tests), whose result has ``.texts`` (a plain list of strings is accepted
    too); it is passed in because the data package sits below the sampler.
    Batch ``k`` is generated with seed ``seed + k`` so reruns reproduce the file.
    """
    records = [r for r in read_records(in_path, fields=fields) if inputs_of(r)]
    jobs = [(r, text) for r in records for text in inputs_of(r)]
    outputs: list[str] = []
    for k, start in enumerate(range(0, len(jobs), batch_size)):
        prompts = [_prompt(tokenizer, text) for _, text in jobs[start:start + batch_size]]
        result = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                          temperature=temperature, seed=seed + k)
        outputs += [text.strip() for text in _texts(result)]
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    produced = iter(outputs)
    with open(out_path, "w", encoding="utf-8") as f:
        for record in records:
            originals = inputs_of(record)
            data = with_inputs(record, [next(produced) for _ in originals])
            data["provenance"] = {
                "paraphrase_of": {"path": record.path, "line": record.line},
                "original": originals if len(originals) > 1 else originals[0],
                "model": model_name, "temperature": temperature, "seed": seed,
                "max_new_tokens": max_new_tokens}
            f.write(json.dumps(data, ensure_ascii=False) + "\n")
    return len(records)
