"""GRPO's `{type: model, path, label}` reward: a sequence classifier scores each completion.

The classifier is what `jaxlm train task=classification` leaves (its run folder, whose hf/ is loaded, or any
HF folder holding a sequence-classification model jaxlm loads, e.g. BertForSequenceClassification). It reads
the completion alone, as the texts it was trained on were single texts (a classifier of answers: helpful,
polite, on-topic); the reward is the softmax probability of `label` (default: the head's last class, the
positive one of a binary head). It is loaded once, when the rewards are built (before any sampling), and
scores a whole rollout in one jitted call; the texts are padded to a power of two of tokens (16 at least, the
model's position table at most), so a run compiles a few shapes, not one per batch.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.errors import ConfigError, UserError

SHORTEST = 16  # the narrowest padded width: a few programs cover every batch


class ClassifierReward:
    """`scores(completions) -> probabilities of the label`, each in [0, 1] (see the module docstring)."""

    def __init__(self, path: str, label: str, where: str):
        from jaxlm.eval.run import resolve_model
        from jaxlm.hf.load import load_pretrained
        from jaxlm.models import architecture_of, position_limit

        if not os.path.exists(path):
            raise ConfigError(f"{where}.path={path!r}: no such classifier (a training run folder of task "
                              "classification, or an HF folder)")
        folder = resolve_model(path)[0]
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
        self.label, self.tokenizer = chosen, tokenizer
        self.longest = position_limit(model.config).size
        graphdef, state = nnx.split(model)
        self._state, index = state, names.index(chosen)

        def probability(state, ids, mask, types):
            logits = nnx.merge(graphdef, state)(ids, mask, types).astype(jnp.float32)
            return jax.nn.softmax(logits, axis=-1)[:, index]

        self._probability = jax.jit(probability)

    def scores(self, completions: list[str]) -> list[float]:
        encoded = self.tokenizer(completions, truncation=True, max_length=self.longest)["input_ids"]
        width = min(self.longest, max(SHORTEST, 1 << (max(map(len, encoded)) - 1).bit_length()))
        ids = np.full((len(encoded), width), self.tokenizer.pad_token_id or 0, np.int32)
        mask = np.zeros_like(ids)
        for row, tokens in enumerate(encoded):
            ids[row, :len(tokens)], mask[row, :len(tokens)] = tokens, 1
        got = self._probability(self._state, ids, mask, np.zeros_like(ids))  # one text: token type 0 throughout
        return [float(p) for p in np.asarray(got)]
