"""What a run starts from: the model (with LoRA applied), its tokenizer, and the data pipelines."""

from __future__ import annotations

import itertools
import os

import jax.numpy as jnp

from jaxlm.data import DataConfig
from jaxlm.train.config import Config, resolve_path


def load_model(cfg: Config, label_names: list[str] | None = None):
    """(model, tokenizer). Token classification puts a fresh tagger for `label_names` on the encoder."""
    from jaxlm.hf.load import load_pretrained
    from jaxlm.models.lora import apply_lora

    path = resolve_path(cfg.model.path)
    kwargs = {}
    if cfg.task == "token_classification":
        kwargs = dict(architecture="BertForTokenClassification",
                      config_overrides={"id2label": {str(i): name for i, name in enumerate(label_names)},
                                        "label2id": {name: i for i, name in enumerate(label_names)}})
    model, tokenizer = load_pretrained(path, jnp.dtype(cfg.model.dtype), **kwargs)
    if tokenizer is None:
        raise FileNotFoundError(f"model.path={cfg.model.path!r}: no tokenizer files next to the weights")
    if cfg.model.lora.rank > 0:
        apply_lora(model, cfg.model.lora.targets, cfg.model.lora.rank, cfg.model.lora.alpha, seed=cfg.train.seed)
    return model, tokenizer


def load_tokenizer(cfg: Config):
    """The tokenizer alone (token classification needs it to find the label set before the model)."""
    path = resolve_path(cfg.model.path)
    if path.endswith(".gguf"):
        return None
    from jaxlm.hf.load import read_tokenizer

    return read_tokenizer(path)


def build_pipelines(cfg: Config, tokenizer, label_names: list[str] | None = None):
    """(train pipeline, eval pipeline or None, test pipeline or None). Train batches are sized for one
    optimizer step, eval and test batches for one micro-batch."""
    from jaxlm.data import build_from_config

    common = dict(task=cfg.task, seq_len=cfg.train.seq_len, seed=cfg.train.seed)
    if cfg.task == "token_classification":
        common["label_names"] = label_names
    train = build_from_config(cfg.data, tokenizer, batch_size=cfg.train.batch_size, split="train", **common)
    if cfg.task == "token_classification":
        common["label_names"] = train.label_names
    micro = cfg.train.batch_size // cfg.train.grad_accum
    evaluation = build_from_config(cfg.data, tokenizer, batch_size=micro, split="eval", **common)
    test = build_from_config(cfg.data, tokenizer, batch_size=micro, split="test", **common)
    return train, evaluation, test


def first_batches(pipeline, count: int) -> list[dict]:
    """The first `count` batches (all of them for 0): evaluation always sees the same ones."""
    if pipeline is None:
        return []
    return list(itertools.islice(iter(pipeline), count or None))


def held_out_prompts(data: DataConfig, count: int) -> list[dict]:
    """Up to `count` held-out conversations (from data.test, else data.eval, else the held-out part of
    data.train): {"messages": prompt turns, "reference": the answer}."""
    from jaxlm.data.sources import Selection, selected_records
    from jaxlm.eval.prompts import prompt_of

    if count <= 0:
        return []
    sources = data.test or data.eval or data.train
    selection = Selection(eval_fraction=data.eval_fraction, split="all" if data.test or data.eval else "eval")
    per_source = -(-count // len(sources))  # a few from each source
    out = []
    for source in sources:
        records = selected_records(source, selection, on_error="skip", tfds_data_dir=data.tfds_data_dir or None)
        prompts = (p for p in map(prompt_of, records) if p)
        out.extend(itertools.islice(prompts, per_source))
    return out[:count]


def output_paths(output_dir: str) -> dict:
    return {name: os.path.join(output_dir, rel) for name, rel in {
        "checkpoints": "checkpoints", "metrics": "metrics.jsonl", "plot": "loss_curve.png",
        "hf": "hf", "adapter": "adapter", "samples": "samples.json", "config": "config.yaml",
        "ner_report": "ner_report.txt", "test_metrics": "test_metrics.json",
        "test_confusion": "test_confusion_matrix.png",
    }.items()}
