"""`run_eval(options)`: one model scored on one data source; `jaxlm eval` parses the options and calls it.

    model (HF folder, .gguf, or a training run's output folder -> its hf/)
      -> the first `max_examples` records of the data source
      -> scores for the task (metrics.py): loss-based on pipeline batches (scoring.py), answer-based
         on greedy generations (answers.py), with `few_shot` solved train examples in each prompt
      -> DIR/eval.json (scores, settings, the general-ability check) and DIR/predictions.jsonl
         (one line per example: what the model said and what was expected)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os

from jaxlm import model_paths
from jaxlm.assets import AssetMissing
from jaxlm.errors import UserError
from jaxlm.eval import metrics, prompts
from jaxlm.eval.answers import Ask, general_check, local_asker
from jaxlm.outputs import check_output, plain, replacing
from jaxlm.tasks import IGNORE_LABEL, PREFERENCE_TASKS, TASKS

CLASSIFICATION = "classification"
EVAL_TASKS = tuple(t for t in TASKS if t not in PREFERENCE_TASKS)  # pairs are scored while training
CLASSIFY_TOKENS = 8  # a generated label needs a few tokens at most


@dataclasses.dataclass
class EvalOptions:
    model: str
    data: str
    out: str
    task: str = "auto"  # auto | one of EVAL_TASKS
    max_examples: int = 200  # 0 = every record
    few_shot: int = 0
    shots_from: str | None = None  # default: the train split of a tfds: source
    seed: int = 0
    seq_len: int = 256
    batch_size: int = 8
    max_new_tokens: int = 64
    labels: list[str] | None = None  # class names, when neither the model nor the data names them
    adapter: str | None = None  # a PEFT prompt-tuning adapter folder put on the model
    general: bool = True  # the general-ability check (causal LMs)
    base_url: str | None = None  # an OpenAI-compatible server answers (`served.run_served_eval`); `model` is
    api_key_env: str | None = None  # the name it serves, this variable holds its API key
    tfds_data_dir: str | None = None
    overwrite: bool = False  # replace a non-empty `out` whole (else it is refused before any work)


def run_eval(options: EvalOptions, *, progress: bool = True) -> dict:
    """Scores `options.model` on `options.data`, writes eval.json and predictions.jsonl; returns eval.json's dict."""
    import jax.numpy as jnp

    from jaxlm.hf.load import load_pretrained
    from jaxlm.models.contract import is_causal_lm

    check_output(options.out, overwrite=options.overwrite, folder=True)
    model_path, run_task, run_adapter = resolve_model(options.model)
    records = first_records(options.data, options.max_examples, options.tfds_data_dir)
    shot_records = shot_source_records(options) if options.few_shot else []
    model, tokenizer = load_pretrained(model_path, jnp.float32)
    if tokenizer is None:
        raise UserError(f"{model_path}: no tokenizer files next to the weights")
    adapter = options.adapter or run_adapter
    if adapter:
        from jaxlm.hf.peft import load_prompt_tuning_adapter

        load_prompt_tuning_adapter(model, adapter)  # CheckpointError: exit 2
    task = pick_task(options.task, run_task, model, records[0])
    causal = is_causal_lm(model)
    if options.few_shot and not (causal and task in ("sft", CLASSIFICATION)):
        raise UserError(f"--few-shot needs a generative model and task sft or classification (got {task} "
                        f"with {type(model).__name__})")
    result = {"model": options.model, "adapter": adapter, "data": options.data, "task": task,
              "examples": len(records),
              "few_shot": options.few_shot, "seed": options.seed}
    ask = local_asker(model, tokenizer)
    if task == CLASSIFICATION and causal:
        names = label_names(options, model, records)
        scores, rows = classify_by_generation(ask, names, records, shot_records, options, progress)
    else:
        scores, rows = score_records(model, tokenizer, task, records, options, progress)
        if task == "sft":
            answered, rows = answer_records(ask, records, shot_records, options, progress)
            scores["answers"] = answered
    result["scores"] = scores
    if causal and options.general:
        result["general"] = general_check(ask, bool(getattr(tokenizer, "chat_template", None)),
                                          options.max_new_tokens)
    with replacing(options.out, overwrite=options.overwrite, folder=True) as partial:
        write_results(partial, result, rows)  # no report or matrix of an earlier evaluation stays beside it
    return result


# --- inputs -------------------------------------------------------------------------------


def resolve_model(path: str) -> tuple[str, str | None, str | None]:
    """(the model to load, the task of the training run it came from, and that run's prompt-tuning
    adapter: its hf/ holds the base model, the virtual tokens are only in adapter/)."""
    try:
        resolved = model_paths.resolve(path)
    except AssetMissing as e:
        raise UserError(f"--model {path}: {e}") from None
    if not os.path.exists(resolved):
        raise UserError(f"--model {path}: no such HF folder, .gguf file or training run folder")
    return resolved, model_paths.run_task(path), model_paths.prompt_tuning_adapter(path)


def first_records(source: str, limit: int, tfds_data_dir: str | None) -> list:
    from jaxlm.data.sources import Selection, as_source_config, selected_records

    records = selected_records(as_source_config(source), Selection(), tfds_data_dir=tfds_data_dir)
    chosen = list(itertools.islice(records, limit or None))
    if not chosen:
        raise UserError(f"--data {source}: no records")
    return chosen


def pick_task(asked: str, run_task: str | None, model, first_record) -> str:
    """The task asked for; or the training run's; or what the model's head and the records say."""
    if asked != "auto":
        return asked
    if run_task and run_task not in PREFERENCE_TASKS:  # a preference run is a causal LM: the records say
        return run_task
    from jaxlm.models import architecture_of
    from jaxlm.models.contract import is_causal_lm

    name = type(model).__name__
    if architecture_of(model).task:  # a model with a head: the task its head is for
        return architecture_of(model).task
    if not is_causal_lm(model):
        raise UserError(f"--task: a bare {name} has no head to evaluate; load a fine-tuned model or name the task")
    if first_record.kind in ("messages", "prompt_completion"):
        return "sft"
    if first_record.kind == "text" and "label" in first_record.data:
        return CLASSIFICATION
    if first_record.kind == "text":
        return "causal_lm"
    if first_record.kind == "preference":
        raise UserError("--data: preference pairs are scored while training (task dpo, orpo or simpo: the "
                        "eval_rewards/* rows of metrics.jsonl, data.test in test_metrics.json), not by jaxlm eval")
    raise UserError(f"--task: {first_record.kind} records need a token-classification model, not {name}")


def label_names(options: EvalOptions, model, records) -> list[str]:
    """Class names in index order: the model's head, --labels, the TFDS ClassLabel, or the records' names."""
    head = list(getattr(model.config, "id2label", ()) or ()) if model is not None else []  # None: a server
    if head:
        return head
    if options.labels:
        return list(options.labels)
    from jaxlm.data.sources import TFDS_PREFIX, parse_tfds_path

    if options.data.startswith(TFDS_PREFIX):
        from jaxlm.data.builders import dataset_builder

        feature = dataset_builder(parse_tfds_path(options.data)[0], options.tfds_data_dir).info.features["label"]
        if hasattr(feature, "names"):
            return list(feature.names)
    values = {r.data.get("label") for r in records}
    if all(isinstance(v, str) for v in values):
        return sorted(values)
    raise UserError(f"--data {options.data}: labels are numbers with no names; give --labels NAME,NAME,...")


def true_label(record, names: list[str]) -> str:
    if "label" not in record.data:
        raise UserError(f"{record.path}:{record.line}: classification records need a 'label'")
    value = record.data["label"]
    name = names[value] if isinstance(value, int) and 0 <= value < len(names) else str(value)
    if name not in names:
        raise UserError(f"{record.path}:{record.line}: label {value!r} is not one of {names}")
    return name


# --- loss-based scores --------------------------------------------------------------------


def score_records(model, tokenizer, task, records, options: EvalOptions, progress: bool) -> tuple[dict, list]:
    """Scores from the model's logits on the records, through the training data pipeline."""
    from jaxlm.data import build_pipeline
    from jaxlm.eval.scoring import batch_evaluator, score_batches
    from jaxlm.models import position_limit

    names = None
    if task == "token_classification":
        names = list(model.config.id2label)
    elif task == CLASSIFICATION:
        names = label_names(options, model, records)
    limit = position_limit(model.config)
    seq_len = min(options.seq_len, limit.size) if limit.learned else options.seq_len  # no positions past the table
    pipeline = build_pipeline([options.data], tokenizer, task=task, seq_len=seq_len,
                              batch_size=options.batch_size, seed=options.seed, repeat=False, pack=False,
                              label_names=names, shard_index=0, shard_count=1,
                              tfds_data_dir=options.tfds_data_dir)
    batches = _bar(limit_rows(pipeline, len(records) if options.max_examples else None), progress,
                   "scoring", -(-len(records) // options.batch_size))
    scores, pairs = score_batches(batch_evaluator(model, task), batches, task, names)
    return scores, label_rows(task, records, pairs)


def limit_rows(pipeline, rows: int | None):
    """The pipeline's batches up to `rows` rows; later rows of the last batch stop counting."""
    seen = 0
    for batch in pipeline:
        if rows is not None and seen >= rows:
            return
        extra = seen + len(batch["input_ids"]) - rows if rows is not None else 0
        if extra > 0:
            batch = dict(batch)
            for key, fill in (("loss_mask", 0), ("labels", IGNORE_LABEL)):
                if key in batch:
                    batch[key] = batch[key].copy()
                    batch[key][-extra:] = fill
        seen += len(batch["input_ids"])
        yield batch


def label_rows(task, records, pairs: list[tuple]) -> list[dict]:
    """predictions.jsonl rows for the labelling tasks: one per record (the pipeline keeps their order when
    it reads one source without packing). The LM tasks have none: their answers come separately."""
    if task == "token_classification":
        return [{"tokens": r.data["tokens"], "true": t, "predicted": p}
                for r, (t, p) in zip(records, pairs, strict=False)]
    if task == CLASSIFICATION:
        return [{"text": r.data["text"], "label": t, "predicted": p} for r, (t, p) in zip(records, pairs, strict=False)]
    return []


# --- answer-based scores ------------------------------------------------------------------


def answer_records(ask: Ask, records, shot_records, options: EvalOptions, progress: bool) -> tuple[dict, list]:
    """SFT: greedy answers to each record's question, scored against its reference answer."""
    asked = [p for p in map(prompts.prompt_of, records) if p]
    if not asked:
        raise UserError(f"--data {options.data}: no record holds a question with an answer")
    shots = []
    if options.few_shot:
        pool = [p for p in map(prompts.prompt_of, shot_records) if p]
        shots = prompts.draw_shots(pool, options.few_shot, options.seed)
    chats = [prompts.with_shots(p["messages"], shots) for p in asked]
    got = _answer_in_chunks(ask, chats, options.max_new_tokens, progress)
    references = [p["reference"] for p in asked]
    scores = {**metrics.generation_scores(got.texts, references),
              **metrics.degeneration_scores(got.texts, got.finish_reasons)}
    rows = [{"prompt": p["messages"][-1]["content"], "reference": p["reference"], "prediction": text,
             "finish_reason": reason, "exact_match": metrics.exact_match(text, p["reference"])}
            for p, text, reason in zip(asked, got.texts, got.finish_reasons, strict=False)]
    return scores, rows


def classify_by_generation(ask: Ask, names: list[str], records, shot_records, options: EvalOptions,
                           progress: bool) -> tuple[dict, list]:
    """A generative model asked for each text's label, one of `names` (with `few_shot` solved examples first)."""
    shots = []
    if options.few_shot:
        pool = [(r.data["text"], true_label(r, names)) for r in shot_records]
        shots = prompts.draw_shots(pool, options.few_shot, options.seed)
    chats = [prompts.classification_prompt(r.data["text"], names, shots) for r in records]
    got = _answer_in_chunks(ask, chats, CLASSIFY_TOKENS, progress)
    true = [true_label(r, names) for r in records]
    parsed = [prompts.parse_label(text, names) for text in got.texts]
    predicted = [p if p is not None else "(no label)" for p in parsed]
    scores = metrics.classification_scores(true, predicted, names)
    scores["unparsed"] = sum(p is None for p in parsed)
    rows = [{"text": r.data["text"], "label": t, "predicted": p, "answer": a}
            for r, t, p, a in zip(records, true, predicted, got.texts, strict=False)]
    return scores, rows


def shot_source_records(options: EvalOptions) -> list:
    """The records few-shot examples are drawn from: --shots-from, or the train split of a tfds: source."""
    from jaxlm.data.sources import TFDS_PREFIX, parse_tfds_path

    source = options.shots_from
    if source is None:
        if not options.data.startswith(TFDS_PREFIX):
            raise UserError("--few-shot: give --shots-from (the train data to draw examples from)")
        source = f"{TFDS_PREFIX}{parse_tfds_path(options.data)[0]}:train"
    records = first_records(source, 0, options.tfds_data_dir)
    if len(records) < options.few_shot:  # found before the model loads
        raise UserError(f"--few-shot {options.few_shot}: {source} has only {len(records)} record(s)")
    return records


def _answer_in_chunks(ask: Ask, chats, max_new_tokens: int, progress: bool):
    from jaxlm.eval.answers import Answers

    chunk = 32
    texts, reasons = [], []
    for start in _bar(range(0, len(chats), chunk), progress, "generating", -(-len(chats) // chunk)):
        got = ask(chats[start:start + chunk], max_new_tokens)
        texts += got.texts
        reasons += got.finish_reasons
    return Answers(texts, reasons)


def _bar(iterable, enabled: bool, desc: str, total: int):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="batch", dynamic_ncols=True)


# --- outputs ------------------------------------------------------------------------------


def write_results(out: str, result: dict, rows: list[dict]) -> None:
    os.makedirs(out, exist_ok=True)
    scores = result["scores"]
    reports = [scores.get(k) for k in ("entity_report", "tag_report", "report_text") if scores.get(k)]
    if reports:
        with open(os.path.join(out, "report.txt"), "w", encoding="utf-8") as f:
            f.write("\n\n".join(reports))
    if "confusion_matrix" in scores:
        metrics.plot_confusion_matrix(scores["confusion_matrix"], scores["matrix_labels"],
                                      os.path.join(out, "confusion_matrix.png"),
                                      title=f"{os.path.basename(result['model'].rstrip('/'))} on {result['data']}")
    with open(os.path.join(out, "eval.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, ensure_ascii=False, default=plain)
    with open(os.path.join(out, "predictions.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False, default=plain) + "\n" for row in rows)
