"""A sequence classifier's probability of one label for a batch of texts, in one jitted call: GRPO's model
reward (compute/reward_model.py) and synth's classifier judge (synth/judges.py) both score with it.

Texts are padded to a multiple of PAD_MULTIPLE tokens (the model's position table at most): a few compiled
shapes, little padding. One text per row: token type 0 throughout.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from jaxlm.models import position_limit

PAD_MULTIPLE = 32


class LabelProbability:
    """`probability(texts) -> [P(label | text)]` of a loaded sequence classifier and its tokenizer."""

    def __init__(self, model, tokenizer, label: str):
        self.tokenizer, self.max_len = tokenizer, position_limit(model.config).size
        index = list(model.config.id2label).index(label)
        graphdef, self._state = nnx.split(model)

        def probability(state, ids, mask):
            logits = nnx.merge(graphdef, state)(ids, mask)  # [B, labels]
            return jax.nn.softmax(logits.astype("float32"), axis=-1)[:, index]

        self._probability = jax.jit(probability)

    def __call__(self, texts: list[str]) -> list[float]:
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_len)["input_ids"]
        width = min(-(-max(len(ids) for ids in encoded) // PAD_MULTIPLE) * PAD_MULTIPLE, self.max_len)
        ids = np.full((len(texts), width), self.tokenizer.pad_token_id or 0, np.int32)
        mask = np.zeros((len(texts), width), np.int32)
        for row, row_ids in enumerate(encoded):
            ids[row, :len(row_ids)], mask[row, :len(row_ids)] = row_ids, 1
        return [float(p) for p in np.asarray(self._probability(self._state, ids, mask))]
