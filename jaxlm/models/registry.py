"""The model families jaxlm knows, one row each, and the lookups that pick a row.

A `Family` row holds every fact about a family that code outside its model file needs:
its config class (which parses HF config.json and names the `model_type`), our model
classes (each named as the HF class whose weights it loads), the HF classes that load into
them, how HF tensor names map onto our parameters, the HF tensors to skip, the short LoRA
target names, where positions end, the task of each head and the family's GGUF form. Loading,
export (HF and GGUF), LoRA, PEFT, quantisation, prompt tuning, sampling and eval ask these rows
instead of naming families, so adding a family is a model file (and its GGUF layout) plus a row here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import NamedTuple

from jaxlm.models import gemma_gguf, gpt2_gguf, llama_gguf, moe_gguf, phi3_gguf, qwen_gguf
from jaxlm.models.bert import BertConfig, BertForSequenceClassification, BertForTokenClassification, BertModel
from jaxlm.models.gemma2 import Gemma2Config, Gemma2ForCausalLM
from jaxlm.models.gemma3 import Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma3TextConfig
from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel
from jaxlm.models.llama import LlamaConfig, LlamaForCausalLM
from jaxlm.models.mistral import MistralConfig, MistralForCausalLM
from jaxlm.models.mixtral import MixtralConfig, MixtralForCausalLM
from jaxlm.models.phi3 import Phi3Config, Phi3ForCausalLM
from jaxlm.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from jaxlm.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from jaxlm.models.qwen3_moe import Qwen3MoeConfig, Qwen3MoeForCausalLM
from jaxlm.models.weight_map import GGUFLayout, Row


@dataclasses.dataclass(frozen=True, eq=False)  # rows compare by identity
class Family:
    config: type  # `from_hf(dict)` / `to_hf()`; its `model_type` is HF's name for the family
    architectures: tuple[type, ...]  # our model classes, named as the HF classes they load; the first is the default
    aliases: Mapping[str, str]  # other HF classes whose weights load into one of ours (their head is dropped)
    causal_lm: bool  # generates text: sampling, generation_config.json, PEFT task CAUSAL_LM
    weights: tuple[Row, ...]  # HF tensor names <-> our parameter paths (see weight_map)
    base_prefix: str  # what HF puts before the base model's tensor names inside a model with a head
    ignored: tuple[str, ...]  # regexes of HF tensors that are buffers or tied duplicates, never parameters
    lora_names: Mapping[str, str]  # short LoRA target (model.lora.targets) -> our layer name
    position_key: str  # the config field that says how many positions the model has
    learned_positions: bool  # True: a learned table ends there; False: RoPE, which only degrades past it
    layers: str | None = None  # attribute holding the repeated decoder layers (model.scan_layers); None: none
    token_embedding: str = ""  # our path of the input token table (prompt tuning extends it); "" = not supported
    # Our class name -> the task its head is for (`jaxlm eval --task auto`, PEFT's task_type); a class not
    # listed is a causal LM (its data says sft or causal_lm) or a bare encoder.
    head_tasks: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Path prefixes of the modules a head adds on the base model: only these may start untrained when a
    # checkpoint of another head (or none) loads into a class with a head.
    head_modules: tuple[str, ...] = ()
    gguf: GGUFLayout | None = None  # names, layouts and metadata in a llama.cpp GGUF file; None: no GGUF form

    @property
    def model_type(self) -> str:
        return self.config.model_type


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One of our model classes in its family: what `load_pretrained` builds and `export_pretrained` names."""

    name: str  # the HF class name, written to config.json "architectures"
    model_cls: type
    family: Family

    @property
    def task(self) -> str | None:
        """The task this class's head is for ("token_classification", "classification"), or None."""
        return self.family.head_tasks.get(self.name)


class PositionLimit(NamedTuple):
    size: int  # positions 0 .. size - 1
    key: str  # the config field that says so, for error messages
    learned: bool  # a learned table ends at `size`: later positions do not exist (GPT-2, BERT); RoPE has no table


LLAMA = Family(
    config=LlamaConfig,
    architectures=(LlamaForCausalLM,),
    aliases={"LlamaModel": "LlamaForCausalLM"},
    causal_lm=True,
    weights=(
        Row("model.embed_tokens.weight", "embed_tokens.embedding"),
        Row("model.layers.{i}.{norm}.weight", "layers.{i}.{norm}.weight"),
        Row("model.layers.{i}.{block}.{proj}.weight", "layers.{i}.{block}.{proj}.kernel", transpose=True),
        Row("model.layers.{i}.{block}.{proj}.bias", "layers.{i}.{block}.{proj}.bias"),
        Row("model.norm.weight", "norm.weight"),
        Row("lm_head.weight", "lm_head.kernel", transpose=True),
    ),
    base_prefix="model.",
    ignored=(r".*rotary_emb\.inv_freq$",),
    lora_names={"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                "gate": "gate_proj", "up": "up_proj", "down": "down_proj"},
    position_key="max_position_embeddings",
    learned_positions=False,
    layers="layers",
    token_embedding="embed_tokens",
    head_modules=("lm_head.",),  # a base LlamaModel checkpoint gets a new output layer
    gguf=llama_gguf.LAYOUT,
)

# Mistral's GGUF form is Llama's (llama.cpp's converter writes it so too): a GGUF "llama" file reads as Llama.
MISTRAL = dataclasses.replace(
    LLAMA, config=MistralConfig, architectures=(MistralForCausalLM,), aliases={"MistralModel": "MistralForCausalLM"}
)

# Qwen is Llama's computation with q/k/v biases (Qwen2) or query/key norms (Qwen3), and GGUF files of its own.
QWEN2 = dataclasses.replace(
    LLAMA,
    config=Qwen2Config,
    architectures=(Qwen2ForCausalLM,),
    aliases={"Qwen2Model": "Qwen2ForCausalLM"},
    gguf=qwen_gguf.QWEN2,
)

QWEN3 = dataclasses.replace(
    LLAMA,
    config=Qwen3Config,
    architectures=(Qwen3ForCausalLM,),
    aliases={"Qwen3Model": "Qwen3ForCausalLM"},
    weights=(*LLAMA.weights, Row("model.layers.{i}.self_attn.{norm}.weight", "layers.{i}.self_attn.{norm}.weight")),
    gguf=qwen_gguf.QWEN3,
)

# Mixtures of experts: Llama-like rows whose experts' tensors (one per expert in HF files) stack into one
# [experts, in, out] parameter per projection; the router is the `{block}.gate` linear layer of the Llama rows.
# In GGUF, Qwen3-MoE is llama.cpp's "qwen3moe" and Mixtral its "llama" with experts (models/moe_gguf.py).
QWEN3_MOE = dataclasses.replace(
    QWEN3,
    config=Qwen3MoeConfig,
    architectures=(Qwen3MoeForCausalLM,),
    aliases={"Qwen3MoeModel": "Qwen3MoeForCausalLM"},
    weights=(Row("model.layers.{i}.mlp.experts.{e}.{proj}.weight", "layers.{i}.mlp.experts.{proj}", transpose=True,
                 stacked="e"), *QWEN3.weights),
    gguf=moe_gguf.QWEN3_MOE,
)

MIXTRAL = dataclasses.replace(
    MISTRAL,
    config=MixtralConfig,
    architectures=(MixtralForCausalLM,),
    aliases={"MixtralModel": "MixtralForCausalLM"},
    lora_names={**MISTRAL.lora_names, "gate": "w1", "up": "w3", "down": "w2"},  # its experts' names
    weights=(Row("model.layers.{i}.block_sparse_moe.experts.{e}.{w}.weight", "layers.{i}.block_sparse_moe.experts.{w}",
                 transpose=True, stacked="e"), *MISTRAL.weights),
    gguf=moe_gguf.MIXTRAL,
)

# Gemma is Llama's tensors under the same names, with two more norms a layer (the `{norm}` of Llama's rows).
GEMMA2 = dataclasses.replace(
    LLAMA,
    config=Gemma2Config,
    architectures=(Gemma2ForCausalLM,),
    aliases={"Gemma2Model": "Gemma2ForCausalLM"},
    gguf=gemma_gguf.GEMMA2,
)

GEMMA3 = dataclasses.replace(
    QWEN3,
    config=Gemma3TextConfig,
    architectures=(Gemma3ForCausalLM,),
    aliases={"Gemma3TextModel": "Gemma3ForCausalLM"},
    gguf=gemma_gguf.GEMMA3,
)

# The language model inside a vision checkpoint, under transformers 5's names (model.language_model.) and
# earlier ones (language_model.model.); export writes the text names, as a gemma3_text folder.
GEMMA3_VISION = dataclasses.replace(
    GEMMA3,
    config=Gemma3Config,
    architectures=(Gemma3ForConditionalGeneration,),
    aliases={},
    weights=(
        *GEMMA3.weights,
        *(Row(outer + row.hf.removeprefix("model."), row.ours, row.transpose)
          for row in GEMMA3.weights if row.hf.startswith("model.")
          for outer in ("model.language_model.", "language_model.model.")),
        Row("language_model.lm_head.weight", "lm_head.kernel", transpose=True),
    ),
    ignored=(*GEMMA3.ignored, r"^(model\.)?(vision_tower|multi_modal_projector)\."),
)

# Phi-3/4 is Llama's computation on tensors HF stores fused: q/k/v in one qkv_proj, gate/up in one gate_up_proj.
PHI3 = dataclasses.replace(
    LLAMA,
    config=Phi3Config,
    architectures=(Phi3ForCausalLM,),
    aliases={"Phi3Model": "Phi3ForCausalLM"},
    weights=(
        Row("model.layers.{i}.self_attn.qkv_proj.weight", "layers.{i}.self_attn.{part}.kernel", transpose=True,
            parts=("q_proj", "k_proj", "v_proj")),
        Row("model.layers.{i}.mlp.gate_up_proj.weight", "layers.{i}.mlp.{part}.kernel", transpose=True,
            parts=("gate_proj", "up_proj")),
        *LLAMA.weights,
    ),
    gguf=phi3_gguf.LAYOUT,
)

GPT2 = Family(
    config=GPT2Config,
    architectures=(GPT2LMHeadModel,),
    aliases={"GPT2Model": "GPT2LMHeadModel"},
    causal_lm=True,
    weights=(
        Row("transformer.{emb}.weight", "{emb}.embedding"),  # wte, wpe
        Row("transformer.{m+}.weight", "{m+}.scale"),  # LayerNorms: ln_1, ln_2, ln_f
        Row("transformer.{m+}.weight", "{m+}.kernel"),  # Conv1D: already [in, out]
        Row("transformer.{m+}.bias", "{m+}.bias"),
    ),
    base_prefix="transformer.",
    ignored=(r".*\.attn\.(masked_)?bias$", r"^lm_head\.weight$"),  # causal-mask buffers; lm_head is tied to wte
    lora_names={"qkv": "c_attn"},
    position_key="n_positions",
    learned_positions=True,
    layers="h",
    token_embedding="wte",
    gguf=gpt2_gguf.LAYOUT,
)

BERT = Family(
    config=BertConfig,
    architectures=(BertModel, BertForTokenClassification, BertForSequenceClassification),
    aliases={"BertForMaskedLM": "BertModel", "BertForPreTraining": "BertModel"},
    causal_lm=False,
    weights=(
        Row("{m+}.LayerNorm.weight", "{m+}.LayerNorm.scale"),
        Row("{m+}.LayerNorm.bias", "{m+}.LayerNorm.bias"),
        Row("{m*}embeddings.{emb}.weight", "{m*}embeddings.{emb}.embedding"),
        Row("{m+}.weight", "{m+}.kernel", transpose=True),
        Row("{m+}.bias", "{m+}.bias"),
    ),
    base_prefix="bert.",
    ignored=(r".*embeddings\.position_ids$",),
    lora_names={"q": "query", "k": "key", "v": "value"},
    position_key="max_position_embeddings",
    learned_positions=True,
    head_tasks={"BertForTokenClassification": "token_classification",
                "BertForSequenceClassification": "classification"},
    # transformers also initialises the pooler when a checkpoint saved without it gets a sequence classifier.
    head_modules=("classifier.", "bert.pooler."),
)

FAMILIES = {f.model_type: f for f in (LLAMA, MISTRAL, QWEN2, QWEN3, QWEN3_MOE, MIXTRAL, PHI3, GEMMA2, GEMMA3,
                                      GEMMA3_VISION, GPT2, BERT)}
ARCHITECTURES = {
    cls.__name__: Architecture(cls.__name__, cls, family)
    for family in FAMILIES.values()
    for cls in family.architectures
}


def architecture_for(hf_config: dict, source: str = "config.json") -> Architecture:
    """Pick the architecture for an HF config dict; errors name the offending field."""
    model_type = hf_config.get("model_type")
    family = FAMILIES.get(model_type)  # pyright: ignore[reportArgumentType]  None finds no row
    if family is None:
        raise ValueError(f"{source}: unknown model_type {model_type!r}; jaxlm supports {sorted(FAMILIES)}")
    for name in hf_config.get("architectures") or []:
        arch = ARCHITECTURES.get(family.aliases.get(name, name))
        if arch is not None and arch.family is family:
            return arch
    return ARCHITECTURES[family.architectures[0].__name__]


def head_architecture(family: Family, task: str) -> Architecture | None:
    """The class of `family` whose head is for `task` (`Family.head_tasks`), or None when it has none."""
    name = next((name for name, head_task in family.head_tasks.items() if head_task == task), None)
    return None if name is None else ARCHITECTURES[name]


def families_with_head(task: str) -> list[str]:
    """The model_types that have a head for `task`, for messages."""
    return [f.model_type for f in FAMILIES.values() if task in f.head_tasks.values()]


def architecture_of(model) -> Architecture:
    arch = ARCHITECTURES.get(type(model).__name__)
    if arch is None or type(model) is not arch.model_cls:
        raise TypeError(f"{type(model).__name__} is not a jaxlm model")
    return arch


def position_limit(config) -> PositionLimit:
    """How many positions a model config allows, and whether that is a hard (learned-table) limit."""
    family = FAMILIES[config.model_type]
    return PositionLimit(getattr(config, family.position_key), family.position_key, family.learned_positions)
