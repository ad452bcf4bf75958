"""Model families and the registry that picks one from a Hugging Face config.json."""

from __future__ import annotations

import dataclasses

from jaxlm.models.bert import BertConfig, BertForTokenClassification, BertModel
from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel
from jaxlm.models.layers import KVCache
from jaxlm.models.llama import LlamaConfig, LlamaForCausalLM


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str  # the HF class name, written to config.json "architectures"
    family: str  # key of the weight-map tables
    config_cls: type
    model_cls: type
    causal_lm: bool


ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture("LlamaForCausalLM", "llama", LlamaConfig, LlamaForCausalLM, True),
        Architecture("GPT2LMHeadModel", "gpt2", GPT2Config, GPT2LMHeadModel, True),
        Architecture("BertModel", "bert", BertConfig, BertModel, False),
        Architecture("BertForTokenClassification", "bert", BertConfig, BertForTokenClassification, False),
    )
}
_DEFAULT_FOR_MODEL_TYPE = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel", "bert": "BertModel"}
# HF heads whose weights we can load into one of ours (the head itself is then dropped).
_ALIASES = {"GPT2Model": "GPT2LMHeadModel", "LlamaModel": "LlamaForCausalLM", "BertForMaskedLM": "BertModel",
            "BertForPreTraining": "BertModel", "BertForSequenceClassification": "BertModel"}


def architecture_for(hf_config: dict, source: str = "config.json") -> Architecture:
    """Pick the architecture for an HF config dict; errors name the offending field."""
    model_type = hf_config.get("model_type")
    if model_type not in _DEFAULT_FOR_MODEL_TYPE:
        raise ValueError(
            f"{source}: unknown model_type {model_type!r}; jaxlm supports {sorted(_DEFAULT_FOR_MODEL_TYPE)}"
        )
    for name in hf_config.get("architectures") or []:
        name = _ALIASES.get(name, name)
        if name in ARCHITECTURES and ARCHITECTURES[name].family == model_type:
            return ARCHITECTURES[name]
    return ARCHITECTURES[_DEFAULT_FOR_MODEL_TYPE[model_type]]


def architecture_of(model) -> Architecture:
    for arch in ARCHITECTURES.values():
        if type(model) is arch.model_cls:
            return arch
    raise TypeError(f"{type(model).__name__} is not a jaxlm model")


__all__ = [
    "ARCHITECTURES", "Architecture", "architecture_for", "architecture_of", "KVCache",
    "LlamaConfig", "LlamaForCausalLM", "GPT2Config", "GPT2LMHeadModel",
    "BertConfig", "BertModel", "BertForTokenClassification",
]
