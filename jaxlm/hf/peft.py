"""LoRA and prompt-tuning adapters in PEFT's format: the files `peft.PeftModel.from_pretrained` reads onto
the HF base model."""

from __future__ import annotations

import collections
import functools
import json
import os
import re

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from jaxlm.hf.export import hf_state_dict
from jaxlm.models import architecture_of
from jaxlm.models.contract import unrolled
from jaxlm.models.lora import lora_experts, lora_modules
from jaxlm.models.prompt_tuning import VirtualTokens, prompt_embed
from jaxlm.models.weight_map import dotted, ours_to_hf
from jaxlm.outputs import plain_mode

# PEFT's task_type for the task of an architecture's head (`Architecture.task`); a causal LM is CAUSAL_LM.
_TASK_TYPES = {"token_classification": "TOKEN_CLS", "classification": "SEQ_CLS"}


def _task_type(arch) -> str:
    return "CAUSAL_LM" if arch.family.causal_lm else _TASK_TYPES.get(arch.task, "FEATURE_EXTRACTION")


def fully_trained_modules(model, trainable) -> tuple[str, ...]:
    """HF names of the modules with a Param that the `trainable` filter trains in full (not LoRA factors,
    not virtual tokens): what a PEFT adapter must carry whole as `modules_to_save`."""
    model = unrolled(model)  # HF names are per layer
    family = architecture_of(model).family
    names = {ours_to_hf(family, dotted(path)).hf.rsplit(".", 1)[0]
             for path, var in nnx.to_flat_state(nnx.state(model, trainable))
             if not isinstance(var, (nnx.LoRAParam, VirtualTokens))}
    return tuple(sorted(names))


def peft_adapter(model, *, base_model: str = "", modules_to_save: tuple[str, ...] = ()):
    """(tensors, adapter_config) in the layout `peft.PeftModel.from_pretrained` reads.

    PEFT keeps `lora_A` as [rank, in] and `lora_B` as [out, rank] (torch Linear layout) under
    `base_model.model.<HF module name>`; its scale is lora_alpha / r, the same as ours. Adapters on
    parameters that HF stores fused (Phi-3's q/k/v in `qkv_proj`) become one adapter on the fused module
    (`_fused_lora`), whose rank and alpha then differ from the others' (`rank_pattern`, `alpha_pattern`).
    `modules_to_save` (HF module names, e.g. a freshly trained "classifier") are written whole.
    """
    model = unrolled(model)  # PEFT names adapters per layer
    family = architecture_of(model).family
    adapters = {dotted(path) + ".kernel": module for path, module in lora_modules(model)}
    kernels = {dotted(path): var.get_value() for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    tensors, settings, hf_layouts = {}, {}, set()
    for mapped in {m.hf: m for m in map(functools.partial(ours_to_hf, family), adapters)}.values():
        module_name = mapped.hf.removesuffix(".weight")
        a, b, scale = _fused_lora([_pair(adapters.get(p)) for p in mapped.ours],
                                  [kernels[p].shape[-1] for p in mapped.ours])
        tensors[f"base_model.model.{module_name}.lora_A.weight"] = a
        tensors[f"base_model.model.{module_name}.lora_B.weight"] = b
        settings[module_name] = (a.shape[0], scale * a.shape[0])
        hf_layouts.add(mapped.transpose)
    _refuse_what_peft_reads_as_experts(model, settings)
    expert_tensors, expert_settings, target_parameters = _expert_adapters(model, family.base_prefix)
    tensors.update(expert_tensors)
    if not settings and not expert_settings:
        raise ValueError("peft_adapter needs a model with LoRA layers")
    if modules_to_save:
        for name, value in hf_state_dict(model).items():
            if name.startswith(tuple(f"{m}." for m in modules_to_save)):
                # Saved under the plain module name, as `PeftModel.save_pretrained` writes them (it adds
                # `modules_to_save.<adapter>` back when loading).
                tensors[f"base_model.model.{name}"] = np.asarray(value, np.float32)
    every = {**settings, **expert_settings}
    rank, alpha = collections.Counter(every.values()).most_common(1)[0][0]
    patterns = _patterns(every, default=(rank, alpha))
    config = {
        "peft_type": "LORA",
        "task_type": _task_type(architecture_of(model)),
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "rank_pattern": {key: r for key, (r, _) in patterns.items()},
        "alpha_pattern": {key: a for key, (_, a) in patterns.items()},
        "lora_dropout": 0.0,
        "target_modules": sorted({name.rsplit(".", 1)[-1] for name in settings}),
        "target_parameters": target_parameters or None,
        # HF kernels we need not transpose are stored [in, out] (GPT-2's Conv1D): PEFT calls that fan_in_fan_out.
        "fan_in_fan_out": hf_layouts == {False},
        "bias": "none",
        "use_rslora": False,
        "modules_to_save": list(modules_to_save) or None,
        "inference_mode": True,
    }
    return tensors, config


def _pair(module):
    return None if module is None else (module.lora_a[...], module.lora_b[...], module.scale)


def _fused_lora(parts, out_sizes):
    """(A [..., rank, in], B [..., out, rank], scale) of one PEFT LoRA that computes what our adapters on the
    parts of a fused HF module compute (`parts`: each part's (A [..., in, r], B [..., r, out], scale) or None,
    in the HF tensor's order, `...` an expert axis or none; `out_sizes`: each part's output size). A stacks
    the parts' A; B puts each part's B on that part's output rows and its own rank's columns, zero elsewhere,
    so no part sees another's adapter. A part whose scale differs from the first's has it folded into its B
    (all parts share one in a model `apply_lora` adapted)."""
    present = [part for part in parts if part is not None]
    scale = present[0][2]
    a = np.concatenate([np.swapaxes(np.asarray(part_a, np.float32), -1, -2) for part_a, _, _ in present], axis=-2)
    b = np.zeros((*a.shape[:-2], sum(out_sizes), a.shape[-2]), np.float32)
    row = col = 0
    for part, out in zip(parts, out_sizes, strict=True):
        if part is not None:
            part_a, part_b, part_scale = part
            rank = part_a.shape[-1]
            b[..., row : row + out, col : col + rank] = (np.swapaxes(np.asarray(part_b, np.float32), -1, -2)
                                                         * (part_scale / scale))
            col += rank
        row += out
    return a, b, scale


def _refuse_what_peft_reads_as_experts(model, settings: dict) -> None:
    """PEFT, under transformers 5, reads a mixture-of-experts model's target_modules named as the experts'
    projections (gate_proj/up_proj/down_proj, Mixtral's w1/w3/w2) as the experts' fused parameters, so an
    adapter on a dense layer's MLP of such a model (Qwen3-MoE's `mlp_only_layers`) has no PEFT form."""
    expert_names = getattr(model.config, "expert_names", ())
    dense = sorted(name for name in settings if name.rsplit(".", 1)[-1] in expert_names)
    if dense:
        raise ValueError(f"the LoRA adapter on {dense[0]} (a dense layer's MLP) has no PEFT form: PEFT reads "
                         f"{', '.join(expert_names)} of a {model.config.model_type} model as its experts. Leave dense "
                         "layers out of model.lora.targets (the merged model in hf/ has the adapters either way)")


def _expert_adapters(model, base_prefix: str) -> tuple[dict, dict, list[str]]:
    """PEFT's form of the adapters on a mixture's experts (`LoRAExperts`): (tensors, {module: (rank, alpha)},
    target_parameters). transformers keeps a layer's experts as one module (`MoEFields.hf_experts`) with two
    3-d parameters, `gate_up_proj` (gate's rows, then up's) and `down_proj`, which PEFT adapts as
    `target_parameters` with one low-rank pair per expert: lora_A [experts * rank, in] expert-major, lora_B
    [out, rank * experts] rank-major; rank_pattern keys name the parameter. When both are adapted, PEFT nests
    the first one's wrapper (gate_up_proj) under the second's, as `base_layer.`."""
    tensors, settings, targets = {}, {}, set()
    for path, module in lora_experts(model):
        hf_experts = model.config.hf_experts
        module_name = f"{base_prefix}{dotted(path[:2])}.{hf_experts}"  # layers.{i} + transformers' module
        gate, up, down = module.names
        fused = [(param, names) for param, names in (("gate_up_proj", (gate, up)), ("down_proj", (down,)))
                 if set(names) & set(module.adapted)]
        for nesting, (param, names) in enumerate(fused):
            parts = [(*module.pair(n), module.scale) if n in module.adapted else None for n in names]
            a, b, scale = _fused_lora(parts, [getattr(module, n)[...].shape[-1] for n in names])
            prefix = f"base_model.model.{module_name}." + "base_layer." * (len(fused) - 1 - nesting)
            tensors[prefix + "lora_A.weight"] = a.reshape(-1, a.shape[-1])
            tensors[prefix + "lora_B.weight"] = b.transpose(1, 2, 0).reshape(b.shape[1], -1)
            settings[f"{module_name}.{param}"] = (a.shape[-2], scale * a.shape[-2])
            targets.add(f"{hf_experts}.{param}")
    return tensors, settings, sorted(targets)


def _patterns(settings: dict[str, tuple], default: tuple) -> dict[str, tuple]:
    """PEFT pattern keys for the modules whose (rank, alpha) is not `default`: the module's own name (e.g.
    "qkv_proj") where every module of that name has the same, else each module's full name as a regex."""
    def leaf(name):
        return name.rsplit(".", 1)[-1]

    by_leaf = collections.defaultdict(set)
    for name, setting in settings.items():
        by_leaf[leaf(name)].add(setting)
    return {leaf(name) if len(by_leaf[leaf(name)]) == 1 else re.escape(name): setting
            for name, setting in settings.items() if setting != default}


def save_peft_adapter(model, out_dir: str, *, base_model: str = "", modules_to_save: tuple[str, ...] = ()) -> str:
    """Write adapter_config.json + adapter_model.safetensors (PEFT format) to `out_dir`."""
    tensors, config = peft_adapter(model, base_model=base_model, modules_to_save=modules_to_save)
    _write_adapter(out_dir, tensors, config)
    return out_dir


def prompt_tuning_adapter(model, *, base_model: str = ""):
    """(tensors, adapter_config) of a PEFT PROMPT_TUNING adapter: `prompt_embeddings` [n, hidden].

    PEFT fills num_layers and num_attention_heads from the base model's config when it loads."""
    embed = prompt_embed(model)
    if embed is None:
        raise ValueError(f"{type(model).__name__} has no virtual tokens (model.prompt_tuning is off)")
    prompt = np.asarray(embed.virtual_tokens[...], np.float32)
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": _task_type(architecture_of(model)),
        "base_model_name_or_path": base_model,
        "num_virtual_tokens": prompt.shape[0],
        "token_dim": prompt.shape[1],
        "num_transformer_submodules": 1,
        "num_layers": None,
        "num_attention_heads": None,
        "prompt_tuning_init": "SAMPLE_VOCAB",  # how ours started; PEFT overwrites it with the saved embeddings
        "inference_mode": True,
    }
    return {"prompt_embeddings": prompt}, config


def save_prompt_tuning_adapter(model, out_dir: str, *, base_model: str = "") -> str:
    """Write adapter_config.json + adapter_model.safetensors of a PEFT prompt-tuning adapter to `out_dir`."""
    tensors, config = prompt_tuning_adapter(model, base_model=base_model)
    _write_adapter(out_dir, tensors, config)
    return out_dir


def load_prompt_tuning_adapter(model, adapter_dir: str) -> None:
    """Put the virtual tokens of a PEFT prompt-tuning adapter folder (ours or PEFT's) on `model`, in place."""
    from safetensors.numpy import load_file

    from jaxlm.hf.errors import CheckpointError
    from jaxlm.models.prompt_tuning import apply_prompt_tuning

    config_path = os.path.join(adapter_dir, "adapter_config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        tensors = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    except FileNotFoundError:
        raise CheckpointError(f"{adapter_dir}: not a PEFT adapter folder (needs adapter_config.json and "
                              "adapter_model.safetensors)") from None
    if config.get("peft_type") != "PROMPT_TUNING" or "prompt_embeddings" not in tensors:
        raise CheckpointError(f"{config_path}: peft_type={config.get('peft_type')!r}; only PROMPT_TUNING adapters "
                              "load here (a LoRA run's hf/ folder already holds the merged model)")
    prompt = tensors["prompt_embeddings"]
    apply_prompt_tuning(model, prompt.shape[0] if prompt.ndim == 2 else 1)
    virtual = prompt_embed(model).virtual_tokens
    if prompt.shape != virtual.get_value().shape:
        raise CheckpointError(f"{adapter_dir}: prompt_embeddings has shape {prompt.shape}, expected "
                              f"{virtual.get_value().shape} for {type(model).__name__}")
    virtual.set_value(np.asarray(prompt, virtual.get_value().dtype))


def _write_adapter(out_dir: str, tensors: dict, config: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
    plain_mode(os.path.join(out_dir, "adapter_model.safetensors"))  # safetensors writes it 0600
    with open(os.path.join(out_dir, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
