"""`jaxlm eval --base-url URL --model NAME`: the answers of a model on an OpenAI-compatible server
(jaxlm serve, llama.cpp's server, vLLM), scored as `run.py` scores a loaded model's.

A server gives text, not logits: sft records are scored on their greedy answers (ROUGE-L, BLEU,
chrF, exact match, degeneration) and classification records by the label each answer names;
loss, perplexity and token classification need the model itself. Prompts are sent as chats,
which the server renders with the model's own template.
"""

from __future__ import annotations

from jaxlm.endpoint import Endpoint
from jaxlm.errors import UserError
from jaxlm.eval.answers import Answers, general_check
from jaxlm.eval.run import (
    CLASSIFICATION,
    EvalOptions,
    answer_records,
    classify_by_generation,
    first_records,
    label_names,
    shot_source_records,
    write_results,
)
from jaxlm.outputs import check_output, replacing


def run_served_eval(options: EvalOptions, *, progress: bool = True) -> dict:
    assert options.base_url is not None
    check_output(options.out, overwrite=options.overwrite, folder=True)
    if options.adapter:
        raise UserError("--adapter cannot go on a model behind --base-url; serve it with its adapter instead")
    records = first_records(options.data, options.max_examples, options.tfds_data_dir)
    shot_records = shot_source_records(options) if options.few_shot else []
    task = options.task if options.task != "auto" else _task_of(records[0])
    if task not in ("sft", CLASSIFICATION):
        raise UserError(f"--task {task}: needs the model's logits; with --base-url only sft (answers) and "
                        "classification (by generation) are scored")
    endpoint = Endpoint(options.base_url, options.model, api_key_env=options.api_key_env)
    try:
        def ask(prompts: list, max_new_tokens: int) -> Answers:
            got = endpoint.complete(prompts, max_tokens=max_new_tokens)  # greedy
            return Answers([c.text.strip() for c in got], [c.finish_reason for c in got])

        result = {"model": options.model, "base_url": options.base_url, "adapter": None, "data": options.data,
                  "task": task, "examples": len(records), "few_shot": options.few_shot, "seed": options.seed}
        if task == CLASSIFICATION:
            names = label_names(options, None, records)
            scores, rows = classify_by_generation(ask, names, records, shot_records, options, progress)
        else:
            answered, rows = answer_records(ask, records, shot_records, options, progress)
            scores = {"answers": answered}
        result["scores"] = scores
        if options.general:
            result["general"] = general_check(ask, True, options.max_new_tokens)
    finally:
        endpoint.close()
    with replacing(options.out, overwrite=options.overwrite, folder=True) as partial:
        write_results(partial, result, rows)
    return result


def _task_of(first_record) -> str:
    if first_record.kind in ("messages", "prompt_completion"):
        return "sft"
    if first_record.kind == "text" and "label" in first_record.data:
        return CLASSIFICATION
    raise UserError(f"--data: {first_record.kind} records are scored on the model's logits, which --base-url "
                    "does not give; evaluate the model folder instead")
