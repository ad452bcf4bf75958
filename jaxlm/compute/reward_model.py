"""GRPO's `{type: model, path, label}` reward: a sequence classifier scores each completion.

The classifier is what `jaxlm train task=classification` leaves (its run folder, whose hf/ is loaded, or any
HF folder holding a sequence-classification model jaxlm loads, e.g. BertForSequenceClassification). It reads
the completion alone, as the texts it was trained on were single texts (a classifier of answers: helpful,
polite, on-topic); the reward is the softmax probability of `label` (default: the head's last class, the
positive one of a binary head). It is loaded once, when the rewards are built (before any sampling), and
scores a whole rollout in one jitted call (compute/label_probability.py, shared with synth's judge).
"""

from __future__ import annotations

import os

import jax.numpy as jnp

from jaxlm.compute.label_probability import LabelProbability
from jaxlm.errors import ConfigError, UserError


class ClassifierReward:
    """`scores(completions) -> probabilities of the label`, each in [0, 1] (see the module docstring); the
    path and label are checked here, each error naming its key."""

    def __init__(self, path: str, label: str, where: str):
        from jaxlm.hf.load import load_pretrained
        from jaxlm.model_paths import run_export
        from jaxlm.models import architecture_of

        if not os.path.exists(path):
            raise ConfigError(f"{where}.path={path!r}: no such classifier (a training run folder of task "
                              "classification, or an HF folder)")
        folder = run_export(path)
        if not os.path.isdir(folder):
            raise ConfigError(f"{where}.path={path!r}: a reward model is a folder (a .gguf holds no classifier)")
        try:
            model, tokenizer = load_pretrained(folder, jnp.float32)
        except UserError as e:  # not a model folder, an unknown family, a damaged file: said for this key
            raise ConfigError(f"{where}.path={path!r}: {e}") from None
        if architecture_of(model).task != "classification":
            raise ConfigError(f"{where}.path={path!r} holds a {type(model).__name__}, not a sequence classifier: "
                              "train one with task=classification and give its run folder")
        if tokenizer is None:
            raise ConfigError(f"{where}.path={path!r}: no tokenizer files next to the weights")
        names = list(model.config.id2label)
        chosen = label or names[-1]
        if chosen not in names:
            raise ConfigError(f"{where}.label={label!r} is not a label of {path} (it has {names})")
        self.label, self.scores = chosen, LabelProbability(model, tokenizer, chosen)
