"""What a run starts from: the model (with LoRA applied), its tokenizer, and the data pipelines."""

from __future__ import annotations

import itertools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.data import DataConfig
from jaxlm.errors import ConfigError, UserError, warn
from jaxlm.models.registry import architecture_for, families_with_head, head_architecture
from jaxlm.tasks import IGNORE_LABEL, LABELLED_TASKS
from jaxlm.train.config import Config, resolve_path


def load_model(cfg: Config, label_names: list[str] | None = None):
    """(model, tokenizer). Labelled tasks put their head for `label_names` on the encoder; then LoRA
    or prompt tuning go on as configured."""
    from jaxlm.hf.load import load_pretrained, read_hf_config
    from jaxlm.models.contract import is_causal_lm

    path = resolve_path(cfg.model.path)
    head = head_for(cfg, label_names, read_hf_config(path), path)
    model, tokenizer = load_pretrained(path, jnp.dtype(cfg.model.dtype), **head)
    if tokenizer is None:
        raise FileNotFoundError(f"model.path={cfg.model.path!r}: no tokenizer files next to the weights")
    if cfg.task not in LABELLED_TASKS and not is_causal_lm(model):
        raise ConfigError(f"task={cfg.task} trains a causal language model; model.path={cfg.model.path!r} "
                          f"holds a {type(model).__name__}")
    return prepare_model(model, cfg), tokenizer


def teacher_path(cfg: Config) -> str:
    """train.distill.teacher as a path to load: a training run's output folder stands for its exported hf/."""
    return resolve_path(cfg.train.distill.teacher)


def load_teacher(cfg: Config, student, tokenizer):
    """train.distill's teacher, loaded once and never trained (None when distillation is off). ConfigError naming
    train.distill.teacher when it is not a causal LM, or when its tokenizer or its vocabulary differs from the
    student's: the loss compares the two next-token distributions id by id."""
    from jaxlm.hf.load import load_pretrained
    from jaxlm.models.contract import is_causal_lm

    given = cfg.train.distill.teacher
    if not given:
        return None
    key = f"train.distill.teacher={given!r}"
    teacher, teacher_tokenizer = load_pretrained(teacher_path(cfg), jnp.dtype(cfg.model.dtype))  # errors name the file
    if not is_causal_lm(teacher):
        raise ConfigError(f"{key} holds a {type(teacher).__name__}; a teacher is a causal language model")
    if teacher_tokenizer is None:
        raise ConfigError(f"{key}: no tokenizer files next to the weights, so it cannot be checked against "
                          "model.path's (distillation needs the same tokens)")
    differs = tokenizer_difference(tokenizer.get_vocab(), teacher_tokenizer.get_vocab())
    sizes = (student.config.vocab_size, teacher.config.vocab_size)
    if not differs and sizes[0] != sizes[1]:
        differs = f"its output layer has {sizes[1]} logits, the student's {sizes[0]}"
    if differs:
        raise ConfigError(f"{key}: its tokenizer differs from model.path's ({differs}); distillation compares "
                          "the two models' next-token distributions token by token, so both need one tokenizer")
    return teacher


def tokenizer_difference(student: dict, teacher: dict) -> str:
    """How two vocabularies (token -> id) differ, in words; "" when they are the same."""
    if len(student) != len(teacher):
        return f"{len(teacher)} tokens, the student's {len(student)}"
    for token, index in sorted(student.items(), key=lambda item: item[1]):
        if teacher.get(token) != index:
            return f"token {token!r} is id {index} in the student's, {teacher.get(token)} in the teacher's"
    return ""


def head_for(cfg: Config, label_names: list[str] | None, hf_config: dict, source: str) -> dict:
    """`load_pretrained` arguments: `model.config_overrides`, plus for a labelled task the class of the
    model's family with that task's head (its registry row's `head_tasks`), made for `label_names`."""
    overrides, architecture = dict(cfg.model.config_overrides), None
    if cfg.task in LABELLED_TASKS:
        family = architecture_for(hf_config, source).family
        head = head_architecture(family, cfg.task)
        if head is None:
            raise ConfigError(f"task={cfg.task} needs an encoder with a {cfg.task} head "
                              f"({', '.join(families_with_head(cfg.task))}); model.path={cfg.model.path!r} "
                              f"is a {family.model_type} model")
        architecture = head.name
        assert label_names is not None  # a labelled task's head is made for its labels
        overrides.update(id2label={str(i): name for i, name in enumerate(label_names)},
                         label2id={name: i for i, name in enumerate(label_names)})
        if cfg.task == "classification":  # softmax cross-entropy, also for two labels (HF's default for ints)
            overrides["problem_type"] = "single_label_classification"
    return dict(architecture=architecture, config_overrides=overrides)


def prepare_model(model, cfg: Config, *, say=print):
    """The loaded model as the run trains it: LoRA adapters or virtual tokens as configured, then the
    attention kernel, remat policy and stacked layers of `cfg.model` (`say` gets a line when attention
    falls back, when bfloat16 compute is likely slower than float32 on this CPU, and which host allocator
    jaxlm chose)."""
    from jaxlm.cpu_flags import allocator_note, bf16_note
    from jaxlm.models.contract import configure
    from jaxlm.models.execution import Execution
    from jaxlm.models.layers import resolve_attention
    from jaxlm.models.lora import apply_lora
    from jaxlm.models.prompt_tuning import apply_prompt_tuning

    if cfg.model.lora.rank > 0:
        try:
            apply_lora(model, cfg.model.lora.targets, cfg.model.lora.rank, cfg.model.lora.alpha, seed=cfg.train.seed)
        except ValueError as e:  # targets that match no layer of this model
            raise ConfigError(str(e)) from None
    if cfg.model.prompt_tuning.num_virtual_tokens > 0:
        apply_prompt_tuning(model, cfg.model.prompt_tuning.num_virtual_tokens, seed=cfg.train.seed)
    head_dim = getattr(model.config, "head_dim", 0)
    attention, note = resolve_attention(cfg.model.attention, compute_dtype=cfg.train.compute_dtype, head_dim=head_dim,
                                        packed=cfg.data.pack and cfg.task not in LABELLED_TASKS,
                                        softcap=getattr(model.config, "attn_logit_softcapping", None),
                                        layer_windows="sliding_attention" in getattr(model.config, "layer_types", ()))
    if note and say:
        say(f"attention: {note}")
    for note in (bf16_note(cfg.train.compute_dtype, jax.devices()[0].platform), allocator_note()):
        if note and say:
            say(note)
    try:
        # mesh.expert > 1: each device runs its own experts on the tokens sent to it (models/expert_parallel.py)
        expert_axis = "expert" if cfg.mesh.expert > 1 else ""
        return configure(model, Execution(attention, cfg.model.remat, cfg.model.scan_layers, expert_axis))
    except ValueError as e:  # e.g. scan_layers on a family without a decoder stack
        raise ConfigError(str(e)) from None


def configured_labels(cfg: Config) -> list[str] | None:
    """The label names `model.config_overrides.id2label` fixes, in id order (None: from the data)."""
    labels = cfg.model.config_overrides.get("id2label")
    return [labels[k] for k in sorted(labels, key=int)] if labels else None


def check_positions(cfg: Config) -> None:
    """train.seq_len against the model's positions, from its config alone (before any weight is read).

    A learned position table (GPT-2, BERT) has no rows past its size: refused. RoPE (Llama) runs
    past max_position_embeddings but was not trained there: a warning."""
    from jaxlm.hf.load import read_model_config
    from jaxlm.models import position_limit

    limit = position_limit(read_model_config(resolve_path(cfg.model.path)))
    if cfg.train.seq_len <= limit.size:
        return
    if limit.learned:
        raise ConfigError(f"train.seq_len={cfg.train.seq_len} is more than the {limit.size} positions of "
                          f"{cfg.model.path} ({limit.key}={limit.size}, a learned table); "
                          f"set train.seq_len<={limit.size}")
    warn(f"train.seq_len={cfg.train.seq_len} is past {limit.key}={limit.size} of {cfg.model.path}: RoPE runs there, "
         "but the model was not trained on such positions")


def load_tokenizer(cfg: Config):
    """The tokenizer alone (labelled tasks need it to find the label set before the model)."""
    path = resolve_path(cfg.model.path)
    if path.endswith(".gguf"):
        return None
    from jaxlm.hf.load import read_tokenizer

    return read_tokenizer(path)


def build_pipelines(cfg: Config, tokenizer, label_names: list[str] | None = None):
    """(train pipeline, eval pipeline or None, test pipeline or None). Train batches are sized for one
    optimizer step, eval and test batches for one micro-batch."""
    from jaxlm.data import build_from_config

    common: dict[str, Any] = dict(task=cfg.task, seq_len=cfg.train.seq_len, seed=cfg.train.seed)
    processes = jax.process_count()  # each process reads its shard and makes its rows of each batch
    if cfg.task in LABELLED_TASKS:
        common["label_names"] = label_names or configured_labels(cfg)
    train = build_from_config(cfg.data, tokenizer, batch_size=cfg.train.batch_size // processes, split="train",
                              **common)
    if cfg.task in LABELLED_TASKS:
        common["label_names"] = train.label_names
    if cfg.task == "grpo":  # held-out prompts answered and scored by the rewards, in batches of train's size
        return train, build_from_config(cfg.data, tokenizer, batch_size=cfg.train.batch_size // processes,
                                        split="eval", **common), None
    micro = cfg.train.batch_size // cfg.train.grad_accum
    evaluation = build_from_config(cfg.data, tokenizer, batch_size=micro // processes, split="eval", **common)
    test = build_from_config(cfg.data, tokenizer, batch_size=micro // processes, split="test", **common)
    return train, evaluation, test


def training_pairs_once(cfg: Config, tokenizer):
    """The training records once, in order, unaugmented, in micro-batches (dpo.precompute_reference reads every
    pair the run can see)."""
    from jaxlm.data import build_from_config

    pipeline = build_from_config(cfg.data, tokenizer, task=cfg.task, seq_len=cfg.train.seq_len, seed=cfg.train.seed,
                                 batch_size=cfg.train.batch_size // cfg.train.grad_accum // jax.process_count(),
                                 split="train", repeat=False)
    assert pipeline is not None  # a config always has training data
    return iter(pipeline)


NOTHING_COUNTS = {"loss_mask": 0, "labels": IGNORE_LABEL, "source_id": -1}  # padding: no loss, no label, no source


def padded_to(batches: list[dict], count: int) -> list[dict]:
    """`batches`, then batches like the first in which nothing counts, up to `count` in all."""
    if len(batches) >= count:
        return batches
    empty = {k: np.full_like(v, NOTHING_COUNTS.get(k, 0)) for k, v in batches[0].items()}
    return batches + [empty] * (count - len(batches))


def full_rows(batches: list[dict]) -> list[dict]:
    """A short last batch filled up with rows in which nothing counts: every batch has the first's shape, so
    the eval step compiles once (a second shape would cost a second compilation, at every scoring)."""
    rows = len(next(iter(batches[0].values()))) if batches else 0
    return [{k: np.concatenate([v, np.full((rows - len(v), *v.shape[1:]), NOTHING_COUNTS.get(k, 0), v.dtype)])
             for k, v in b.items()} if len(next(iter(b.values()))) < rows else b for b in batches]


def first_batches(pipeline, count: int) -> list[dict]:
    """The first `count` batches (all of them for 0): evaluation always sees the same ones."""
    if pipeline is None:
        return []
    batches = list(itertools.islice(iter(pipeline), count or None))
    if not batches:
        raise UserError(f"the evaluation data ({', '.join(pipeline.source_names)}) gives no batch: each record needs "
                        "2 or more tokens; are its records empty?")
    return full_rows(batches)


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


def output_paths(output_dir: str, checkpoint_dir: str = "") -> dict:
    paths = {name: os.path.join(output_dir, rel) for name, rel in {
        "checkpoints": "checkpoints", "metrics": "metrics.jsonl", "plot": "loss_curve.png", "mixing": "mixing.png",
        "rewards": "rewards.png", "experts": "experts.png", "rollout_samples": "samples.md",
        "hf": "hf", "adapter": "adapter", "samples": "samples.json", "config": "config.yaml",
        "ner_report": "ner_report.txt", "classification_report": "classification_report.txt",
        "test_metrics": "test_metrics.json", "test_confusion": "test_confusion_matrix.png", "gguf": "model.gguf",
        "report_error": "report_error.log",
    }.items()}
    if checkpoint_dir:
        paths["checkpoints"] = checkpoint_dir
    return paths
