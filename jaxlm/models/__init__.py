"""Model families (pure Flax NNX: no I/O, no sharding) and the registry that picks one from an HF config.json."""

from jaxlm.models.bert import BertConfig, BertForSequenceClassification, BertForTokenClassification, BertModel
from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel
from jaxlm.models.layers import KVCache
from jaxlm.models.llama import LlamaConfig, LlamaForCausalLM
from jaxlm.models.mistral import MistralConfig, MistralForCausalLM
from jaxlm.models.registry import (
    ARCHITECTURES,
    FAMILIES,
    Architecture,
    Family,
    PositionLimit,
    architecture_for,
    architecture_of,
    position_limit,
)

__all__ = [
    "ARCHITECTURES", "FAMILIES", "Architecture", "Family", "PositionLimit",
    "architecture_for", "architecture_of", "position_limit", "KVCache",
    "LlamaConfig", "LlamaForCausalLM", "MistralConfig", "MistralForCausalLM", "GPT2Config", "GPT2LMHeadModel",
    "BertConfig", "BertModel", "BertForTokenClassification", "BertForSequenceClassification",
]
