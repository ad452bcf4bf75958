"""BERT encoder (post-LayerNorm, absolute positions, token types) and its token- and sequence-classification heads."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxlm.models import layers
from jaxlm.models.execution import Execution


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    id2label: tuple[str, ...] = ()  # labels of the classification head, in index order
    problem_type: str | None = None  # HF's name for the sequence-classification loss; see BertForSequenceClassification

    model_type = "bert"

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> BertConfig:
        if hf.get("hidden_act", "gelu") not in layers.ACTIVATIONS:
            raise ValueError(f"config.json: hidden_act={hf['hidden_act']!r} is not supported")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("config.json: only position_embedding_type='absolute' is supported")
        names = {f.name for f in dataclasses.fields(cls)} - {"id2label"}
        labels = hf.get("id2label") or {}
        id2label = tuple(labels[k] for k in sorted(labels, key=int))
        return cls(**{k: hf[k] for k in names if k in hf}, id2label=id2label)

    def to_hf(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["id2label"] = {str(i): name for i, name in enumerate(self.id2label)}
        out["label2id"] = {name: i for i, name in enumerate(self.id2label)}
        if not self.id2label:
            del out["id2label"], out["label2id"]
        if self.problem_type is None:
            del out["problem_type"]
        return dict(out, model_type=self.model_type, position_embedding_type="absolute")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def _layer_norm(cfg: BertConfig, param_dtype):
    return layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=param_dtype)


class _DenseNorm(nnx.Module):
    """`LayerNorm(dense(x) + residual)`: the output step BERT uses after attention and after the MLP."""

    def __init__(self, in_dim, cfg: BertConfig, *, rngs, param_dtype):
        self.dense = layers.linear(rngs, in_dim, cfg.hidden_size, bias=True, param_dtype=param_dtype)
        self.LayerNorm = _layer_norm(cfg, param_dtype)

    def __call__(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class Embeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs, param_dtype):
        self.word_embeddings = layers.embed(rngs, cfg.vocab_size, cfg.hidden_size, param_dtype=param_dtype)
        self.position_embeddings = layers.embed(
            rngs, cfg.max_position_embeddings, cfg.hidden_size, param_dtype=param_dtype
        )
        self.token_type_embeddings = layers.embed(rngs, cfg.type_vocab_size, cfg.hidden_size, param_dtype=param_dtype)
        self.LayerNorm = _layer_norm(cfg, param_dtype)

    def __call__(self, input_ids, token_type_ids, positions):
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x + self.position_embeddings(positions))


class SelfAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs, param_dtype):
        self.query, self.key, self.value = (
            layers.linear(rngs, cfg.hidden_size, cfg.hidden_size, bias=True, param_dtype=param_dtype) for _ in range(3)
        )
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim

    def __call__(self, x, mask):
        b, t, _ = x.shape
        q, k, v = (y.reshape(b, t, self.heads, self.head_dim)
                   for y in layers.fan_out((self.query, self.key, self.value), x))
        return layers.attention(q, k, v, mask)[0].reshape(b, t, -1)


class Attention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs, param_dtype):
        self.self = SelfAttention(cfg, rngs=rngs, param_dtype=param_dtype)  # HF's name, kept for the weight map
        self.output = _DenseNorm(cfg.hidden_size, cfg, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, mask):
        return self.output(self.self(x, mask), x)


class Intermediate(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs, param_dtype):
        self.dense = layers.linear(rngs, cfg.hidden_size, cfg.intermediate_size, bias=True, param_dtype=param_dtype)
        self.activation = cfg.hidden_act

    def __call__(self, x):
        return layers.ACTIVATIONS[self.activation](self.dense(x))


class Layer(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs, param_dtype):
        self.attention = Attention(cfg, rngs=rngs, param_dtype=param_dtype)
        self.intermediate = Intermediate(cfg, rngs=rngs, param_dtype=param_dtype)
        self.output = _DenseNorm(cfg.intermediate_size, cfg, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, mask):
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class Encoder(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs, param_dtype):
        self.layer = nnx.List([Layer(cfg, rngs=rngs, param_dtype=param_dtype) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x, mask):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class Pooler(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs, param_dtype):
        self.dense = layers.linear(rngs, cfg.hidden_size, cfg.hidden_size, bias=True, param_dtype=param_dtype)

    def __call__(self, hidden):
        return jnp.tanh(self.dense(hidden[:, 0]))


class BertModel(nnx.Module):
    """`model(ids, attention_mask, token_type_ids)` -> last hidden state [batch, seq, hidden]."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32, add_pooling_layer=True,
                 execution: Execution = Execution()):
        self.config, self.execution = cfg, execution
        self.embeddings = Embeddings(cfg, rngs=rngs, param_dtype=param_dtype)
        self.encoder = Encoder(cfg, rngs=rngs, param_dtype=param_dtype)
        # The pooler is kept only so exported folders load into transformers' BertModel with no missing keys.
        self.pooler = Pooler(cfg, rngs=rngs, param_dtype=param_dtype) if add_pooling_layer else None

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, positions=None):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if positions is None:  # BERT counts padding too (it pads on the right)
            positions = layers.default_positions(input_ids, None)
        mask = layers.Mask(padding=attention_mask, causal=False, implementation=self.execution.attention)
        return self.encoder(self.embeddings(input_ids, token_type_ids, positions), mask)


class _Classifier(nnx.Module):
    """The BERT encoder, dropout and a linear layer over the labels of `config.id2label` (HF's layout)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, param_dtype, dropout_rate: float, pooler: bool,
                 execution: Execution):
        self.config = cfg
        self.bert = BertModel(cfg, rngs=rngs, param_dtype=param_dtype, add_pooling_layer=pooler, execution=execution)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.classifier = layers.linear(rngs, cfg.hidden_size, len(cfg.id2label), bias=True, param_dtype=param_dtype)

    @property
    def execution(self) -> Execution:  # the encoder's: one object for the whole model
        return self.bert.execution

    @execution.setter
    def execution(self, value: Execution):
        self.bert.execution = value


class BertForTokenClassification(_Classifier):
    """BERT encoder plus a linear tagger: `model(ids, attention_mask)` -> logits [batch, seq, labels]."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dropout_rate: float = 0.1,
                 execution: Execution = Execution()):
        if not cfg.id2label:
            raise ValueError("BertForTokenClassification needs config.id2label (the tag set)")
        super().__init__(cfg, rngs=rngs, param_dtype=param_dtype, dropout_rate=dropout_rate, pooler=False,
                         execution=execution)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        hidden = self.bert(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(hidden))


class BertForSequenceClassification(_Classifier):
    """BERT encoder, its pooler and a linear classifier, as transformers builds it:
    `model(ids, attention_mask)` -> logits [batch, labels] from tanh(dense(hidden of [CLS])).

    Trained with softmax cross-entropy over the labels (HF's problem_type "single_label_classification"),
    so binary classification is two labels, as transformers does with num_labels=2; regression
    (one label) and multi-label (sigmoid) heads are not implemented and are refused.
    """

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dropout_rate: float = 0.1,
                 execution: Execution = Execution()):
        if len(cfg.id2label) < 2:
            raise ValueError(f"BertForSequenceClassification needs config.id2label with at least 2 labels, "
                             f"got {list(cfg.id2label)}")
        if cfg.problem_type not in (None, "single_label_classification"):
            raise ValueError(f"config.json: problem_type={cfg.problem_type!r} is not supported; "
                             "only 'single_label_classification' (softmax cross-entropy)")
        super().__init__(cfg, rngs=rngs, param_dtype=param_dtype, dropout_rate=dropout_rate, pooler=True,
                         execution=execution)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        hidden = self.bert(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(self.bert.pooler(hidden)))  # pyright: ignore[reportOptionalCall]  built with pooler=True
