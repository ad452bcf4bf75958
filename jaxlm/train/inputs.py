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
    """(train pipeline, eval pipeline or None). Batches are sized for one optimizer step."""
    from jaxlm.data import build_from_config

    common = dict(task=cfg.task, seq_len=cfg.train.seq_len, seed=cfg.train.seed)
    if cfg.task == "token_classification":
        common["label_names"] = label_names
    train = build_from_config(cfg.data, tokenizer, batch_size=cfg.train.batch_size, split="train", **common)
    if cfg.task == "token_classification":
        common["label_names"] = train.label_names
    micro = cfg.train.batch_size // cfg.train.grad_accum
    evaluation = build_from_config(cfg.data, tokenizer, batch_size=micro, split="eval", **common)
    return train, evaluation


def first_batches(pipeline, count: int) -> list[dict]:
    """The first `count` batches (all of them for 0): evaluation always sees the same ones."""
    if pipeline is None:
        return []
    return list(itertools.islice(iter(pipeline), count or None))


def held_out_prompts(data: DataConfig, count: int) -> list[dict]:
    """Up to `count` held-out conversations: {"messages": prompt turns, "reference": the answer}."""
    from jaxlm.data.sources import Selection, selected_records

    if count <= 0:
        return []
    sources = data.eval or data.train
    selection = Selection(eval_fraction=data.eval_fraction, split="all" if data.eval else "eval")
    per_source = -(-count // len(sources))  # a few from each source
    out = []
    for source in sources:
        records = selected_records(source, selection, on_error="skip", tfds_data_dir=data.tfds_data_dir or None)
        prompts = (p for p in map(_prompt_of, records) if p)
        out.extend(itertools.islice(prompts, per_source))
    return out[:count]


def _prompt_of(record) -> dict | None:
    if record.kind == "messages":
        messages = record.data["messages"]
        for i, m in enumerate(messages):
            if m["role"] == "assistant" and i > 0:
                return {"messages": messages[:i], "reference": m["content"]}
    if record.kind == "prompt_completion":
        return {"messages": [{"role": "user", "content": record.data["prompt"]}],
                "reference": record.data["completion"]}
    return None


def output_paths(output_dir: str) -> dict:
    return {name: os.path.join(output_dir, rel) for name, rel in {
        "checkpoints": "checkpoints", "metrics": "metrics.jsonl", "plot": "loss_curve.png", "mixing": "mixing.png",
        "hf": "hf", "adapter": "adapter", "samples": "samples.json", "config": "config.yaml",
        "ner_report": "ner_report.txt",
    }.items()}
