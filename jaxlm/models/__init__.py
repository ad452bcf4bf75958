"""Model families (pure Flax NNX: no I/O, no sharding) and the registry that picks one from an HF config.json."""

from jaxlm.models.bert import BertConfig, BertForSequenceClassification, BertForTokenClassification, BertModel
from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel
from jaxlm.models.kv_cache import KVCache
from jaxlm.models.llama import LlamaConfig, LlamaForCausalLM
from jaxlm.models.mistral import MistralConfig, MistralForCausalLM
from jaxlm.models.phi3 import Phi3Config, Phi3ForCausalLM
from jaxlm.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from jaxlm.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
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
    "LlamaConfig", "LlamaForCausalLM", "MistralConfig", "MistralForCausalLM",
    "Qwen2Config", "Qwen2ForCausalLM", "Qwen3Config", "Qwen3ForCausalLM", "Phi3Config", "Phi3ForCausalLM",
    "GPT2Config", "GPT2LMHeadModel",
    "BertConfig", "BertModel", "BertForTokenClassification", "BertForSequenceClassification",
]
