"""What a run starts from: the model (with LoRA applied), its tokenizer, and the data pipelines."""

from __future__ import annotations

import itertools
import os

import jax.numpy as jnp

from jaxlm.data import DataConfig
from jaxlm.errors import ConfigError
from jaxlm.train.config import Config, resolve_path


def load_model(cfg: Config, label_names: list[str] | None = None):
    """(model, tokenizer). Token classification puts a fresh tagger for `label_names` on the encoder."""
    from jaxlm.hf.load import load_pretrained

    path = resolve_path(cfg.model.path)
    model, tokenizer = load_pretrained(path, jnp.dtype(cfg.model.dtype), **head_for(cfg, label_names))
    if tokenizer is None:
        raise FileNotFoundError(f"model.path={cfg.model.path!r}: no tokenizer files next to the weights")
    return prepare_model(model, cfg), tokenizer


def head_for(cfg: Config, label_names: list[str] | None) -> dict:
    """`load_pretrained` arguments that put the task's head on the checkpoint (a tagger for NER)."""
    if cfg.task != "token_classification":
        return {}
    return dict(architecture="BertForTokenClassification",
                config_overrides={"id2label": {str(i): name for i, name in enumerate(label_names)},
                                  "label2id": {name: i for i, name in enumerate(label_names)}})


def prepare_model(model, cfg: Config, *, say=print):
    """The loaded model as the run trains it: LoRA adapters on the targets, then the attention
    kernel, remat policy and stacked layers of `cfg.model` (`say` gets a line when attention falls back)."""
    from jaxlm.models.execution import configure
    from jaxlm.models.layers import resolve_attention
    from jaxlm.models.lora import apply_lora

    if cfg.model.lora.rank > 0:
        apply_lora(model, cfg.model.lora.targets, cfg.model.lora.rank, cfg.model.lora.alpha, seed=cfg.train.seed)
    head_dim = getattr(model.config, "head_dim", 0)
    attention, note = resolve_attention(cfg.model.attention, compute_dtype=cfg.train.compute_dtype, head_dim=head_dim,
                                        packed=cfg.data.pack and cfg.task != "token_classification")
    if note and say:
        say(f"attention: {note}")
    try:
        return configure(model, attention=attention, remat=cfg.model.remat, scan_layers=cfg.model.scan_layers)
    except ValueError as e:  # e.g. scan_layers on a family without a decoder stack
        raise ConfigError(str(e)) from None


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
        "checkpoints": "checkpoints", "metrics": "metrics.jsonl", "plot": "loss_curve.png",
        "hf": "hf", "adapter": "adapter", "samples": "samples.json", "config": "config.yaml",
        "ner_report": "ner_report.txt",
    }.items()}
