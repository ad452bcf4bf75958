"""What a finished run leaves for people: sample answers, the NER or classification report, the exported model."""

from __future__ import annotations

import json
import os

import numpy as np

from jaxlm.sampling import generate
from jaxlm.tasks import IGNORE_LABEL


def generate_answers(model, tokenizer, prompts: list[dict], max_new_tokens: int) -> list[str]:
    """Greedy answers to chat prompts with jaxlm's sampler."""
    if not prompts:
        return []
    from jaxlm.models.lora import has_lora, merge_lora

    model = merge_lora(model) if has_lora(model) else model
    result = generate(model, tokenizer, [p["messages"] for p in prompts],
                      max_new_tokens=max_new_tokens, temperature=0.0)
    return [t.strip() for t in result.texts]


def write_samples(path: str, prompts: list[dict], before: list[str] | None, after: list[str] | None) -> None:
    rows = []
    for i, p in enumerate(prompts):
        rows.append({"prompt": p["messages"][-1]["content"], "reference": p["reference"],
                     "before": before[i] if before else None, "after": after[i] if after else None})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2, ensure_ascii=False)
    with open(os.path.splitext(path)[0] + ".md", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(f"### {r['prompt']}\n\n- reference: {r['reference']}\n- before: {r['before']}\n"
                    f"- after: {r['after']}\n\n")


def ner_report(true_tags: list[list[str]], predicted_tags: list[list[str]]) -> tuple[dict, str]:
    """Entity-level precision/recall/F1 per type (seqeval, strict BIO span matching)."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    kwargs = dict(zero_division=0)
    summary = {"eval_precision": precision_score(true_tags, predicted_tags, **kwargs),
               "eval_recall": recall_score(true_tags, predicted_tags, **kwargs),
               "eval_f1": f1_score(true_tags, predicted_tags, **kwargs)}
    return summary, classification_report(true_tags, predicted_tags, digits=3, **kwargs)


def ner_tags(labels: list[np.ndarray], predictions: list[np.ndarray], label_names: list[str]):
    from jaxlm.data.encode import word_tags

    true_tags, predicted_tags = [], []
    for lab, pred in zip(labels, predictions):
        t, p = word_tags(lab, pred, label_names)
        true_tags += t
        predicted_tags += p
    return true_tags, predicted_tags


def classification_report(labels: list[np.ndarray], predictions: list[np.ndarray],
                          label_names: list[str]) -> tuple[dict, str]:
    """Accuracy and macro-F1 over every class (scikit-learn), and the per-class report; rows labelled -100
    (padding of the last eval batch) do not count."""
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.metrics import classification_report as per_class

    true, predicted = np.concatenate(labels), np.concatenate(predictions)
    keep = true != IGNORE_LABEL
    true, predicted = true[keep], predicted[keep]
    classes = list(range(len(label_names)))
    summary = {"eval_accuracy": float(accuracy_score(true, predicted)),
               "eval_macro_f1": float(f1_score(true, predicted, labels=classes, average="macro", zero_division=0))}
    text = per_class(true, predicted, labels=classes, target_names=label_names, digits=3, zero_division=0)
    return summary, text


def export(model, tokenizer, paths: dict, *, base_model: str, trainable) -> None:
    """`hf/`: the merged model transformers loads; `adapter/`: the PEFT adapter when LoRA or prompt tuning
    was used. A LoRA adapter carries every module that trained in full (`trainable` selects them: a new
    classifier, `model.train_only` layers) as PEFT `modules_to_save`."""
    from jaxlm.hf.export import export_pretrained
    from jaxlm.hf.peft import fully_trained_modules, save_peft_adapter, save_prompt_tuning_adapter
    from jaxlm.models.lora import has_lora
    from jaxlm.models.prompt_tuning import num_virtual_tokens

    export_pretrained(model, paths["hf"], tokenizer)
    if has_lora(model):
        save_peft_adapter(model, paths["adapter"], base_model=base_model,
                          modules_to_save=fully_trained_modules(model, trainable))
    elif num_virtual_tokens(model):
        save_prompt_tuning_adapter(model, paths["adapter"], base_model=base_model)
