"""The mixtures of experts in a GGUF file: Qwen3-MoE (llama.cpp's "qwen3moe") and Mixtral (its "llama"
architecture with experts: llama.cpp's converter writes Mixtral so, and `llama_gguf.hf_config` reads a
"llama" file with `expert_count` as Mixtral).

A sparse layer's router is `ffn_gate_inp` [experts, dim], and each expert projection of all its experts
is one tensor, `ffn_{gate,up,down}_exps` [experts, out, in] in numpy order (each expert's slice is HF's
nn.Linear weight): the `{e}` of the name tables, which the GGUF names lack (`weight_map.gguf_tensors`).
The metadata adds `{arch}.expert_count` and `{arch}.expert_used_count`, and for qwen3moe the experts'
size `expert_feed_forward_length` (Mixtral's is `feed_forward_length`). llama.cpp runs experts in every
layer and renormalises the k chosen probabilities; a model that does otherwise is refused on export.
"""

from __future__ import annotations

from jaxlm.errors import UserError
from jaxlm.models import llama_gguf, qwen_gguf
from jaxlm.models.mixtral import MixtralConfig
from jaxlm.models.qwen3_moe import Qwen3MoeConfig
from jaxlm.models.weight_map import GGUFLayout


def _expert_names(config: type) -> tuple[tuple[str, str], ...]:
    """The router and stacked experts' rows under the family's HF module names (its config's)."""
    block = f"model.layers.{{i}}.{config.moe_attribute}"
    gate, up, down = config.expert_names
    return (
        ("blk.{i}.ffn_gate_inp.weight", f"{block}.gate.weight"),
        ("blk.{i}.ffn_gate_exps.weight", f"{block}.experts.{{e}}.{gate}.weight"),
        ("blk.{i}.ffn_up_exps.weight", f"{block}.experts.{{e}}.{up}.weight"),
        ("blk.{i}.ffn_down_exps.weight", f"{block}.experts.{{e}}.{down}.weight"),
    )


QWEN3_MOE_NAMES = (*qwen_gguf.NAMES, *_expert_names(Qwen3MoeConfig))
MIXTRAL_NAMES = (*llama_gguf.NAMES, *_expert_names(MixtralConfig))


def _write_experts(writer, c, arch: str) -> None:
    dense = [i for i in range(c.num_hidden_layers) if not c.is_sparse(i)]
    if dense:
        raise UserError(f"mlp_only_layers/decoder_sparse_step: layers {dense} are dense; llama.cpp's {arch} "
                        "runs experts in every layer, so this model has no GGUF form")
    if not c.norm_topk_prob:
        raise UserError(f"norm_topk_prob=false: llama.cpp's {arch} renormalises the chosen experts' probabilities, "
                        "so this model has no GGUF form")
    writer.add_expert_count(c.num_experts)
    writer.add_expert_used_count(c.num_experts_per_tok)


def _write_qwen3_moe(writer, c) -> None:
    _write_experts(writer, c, "qwen3moe")
    llama_gguf.write_metadata(writer, c)
    writer.add_expert_feed_forward_length(c.expert_size)


def _write_mixtral(writer, c) -> None:
    _write_experts(writer, c, "llama")
    llama_gguf.write_metadata(writer, c)  # feed_forward_length: the experts' size, Mixtral's intermediate_size


def _qwen3_moe_config(get, vocab, names) -> dict:
    config = qwen_gguf.hf_config_as("qwen3_moe", "Qwen3MoeForCausalLM")(get, vocab, names)
    return {**config, "num_experts": int(get("expert_count")), "num_experts_per_tok": int(get("expert_used_count")),
            "moe_intermediate_size": int(get("expert_feed_forward_length")), "norm_topk_prob": True}


def _sizes(base, size_key: str, experts_key: str, size_field: str):
    def sizes(arch: str, vocab_key: str, c: dict) -> list[tuple[str, int, str, int]]:
        return [*base(arch, vocab_key, c),
                (f"{arch}.expert_count", c[experts_key], "blk.0.ffn_gate_inp.weight", 0),
                (f"{arch}.{size_key}", c[size_field], "blk.0.ffn_up_exps.weight", 1)]

    return sizes


QWEN3_MOE = GGUFLayout(
    "qwen3moe", QWEN3_MOE_NAMES, ("rope_freqs.weight",), _qwen3_moe_config, qwen_gguf.from_gguf, _write_qwen3_moe,
    lambda hf, c: llama_gguf.to_gguf(hf, c, names=QWEN3_MOE_NAMES, permute_qk=False),
    _sizes(qwen_gguf.sizes, "expert_feed_forward_length", "num_experts", "moe_intermediate_size"),
)
MIXTRAL = GGUFLayout(
    "llama", MIXTRAL_NAMES, ("rope_freqs.weight",), llama_gguf.hf_config, llama_gguf.from_gguf, _write_mixtral,
    lambda hf, c: llama_gguf.to_gguf(hf, c, names=MIXTRAL_NAMES),
    _sizes(llama_gguf.sizes, "feed_forward_length", "num_local_experts", "intermediate_size"),
)
