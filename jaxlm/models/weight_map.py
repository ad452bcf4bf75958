"""How Hugging Face tensor names map onto our parameter paths, one table per family.

A table is data: rows of (HF name template, our path template, transpose). A template
placeholder `{name}` matches one dotted segment, `{name+}` several, `{name*}` any prefix.
When an HF name fits several rows, the first whose target parameter exists wins. HF `nn.Linear`
stores weights as [out, in] and `nnx.Linear` as [in, out], hence the transpose flag;
GPT-2's `Conv1D` already stores [in, out].
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple


class Row(NamedTuple):
    hf: str
    ours: str
    transpose: bool = False


LLAMA = (
    Row("model.embed_tokens.weight", "embed_tokens.embedding"),
    Row("model.layers.{i}.{norm}.weight", "layers.{i}.{norm}.weight"),
    Row("model.layers.{i}.{block}.{proj}.weight", "layers.{i}.{block}.{proj}.kernel", transpose=True),
    Row("model.layers.{i}.{block}.{proj}.bias", "layers.{i}.{block}.{proj}.bias"),
    Row("model.norm.weight", "norm.weight"),
    Row("lm_head.weight", "lm_head.kernel", transpose=True),
)

GPT2 = (
    Row("transformer.{emb}.weight", "{emb}.embedding"),  # wte, wpe
    Row("transformer.{m+}.weight", "{m+}.scale"),  # LayerNorms: ln_1, ln_2, ln_f
    Row("transformer.{m+}.weight", "{m+}.kernel"),  # Conv1D: already [in, out]
    Row("transformer.{m+}.bias", "{m+}.bias"),
)

BERT = (
    Row("{m+}.LayerNorm.weight", "{m+}.LayerNorm.scale"),
    Row("{m+}.LayerNorm.bias", "{m+}.LayerNorm.bias"),
    Row("{m*}embeddings.{emb}.weight", "{m*}embeddings.{emb}.embedding"),
    Row("{m+}.weight", "{m+}.kernel", transpose=True),
    Row("{m+}.bias", "{m+}.bias"),
)

# HF tensors that are buffers or duplicates of tied weights, never parameters.
IGNORED = {
    "llama": (r".*rotary_emb\.inv_freq$",),
    "gpt2": (r".*\.attn\.(masked_)?bias$", r"^lm_head\.weight$"),
    "bert": (r".*embeddings\.position_ids$",),
}
# The prefix HF puts before the base model's names inside a model with a head.
BASE_PREFIX = {"llama": "model.", "gpt2": "transformer.", "bert": "bert."}
TABLES = {"llama": LLAMA, "gpt2": GPT2, "bert": BERT}


def dotted(path: tuple) -> str:
    """An nnx state path such as ('layers', 0, 'mlp') as the dotted name the tables use."""
    return ".".join(map(str, path))


@functools.lru_cache(maxsize=None)
def _pattern(template: str) -> re.Pattern:
    regex = re.escape(template)
    regex = re.sub(r"\\\{(\w+)\\\+\\\}", r"(?P<\1>.+)", regex)  # {name+}: dotted path
    regex = re.sub(r"\\\{(\w+)\\\*\\\}", r"(?P<\1>.*)", regex)  # {name*}: possibly empty
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^.]+)", regex)  # {name}: one segment
    return re.compile(regex + "$")


def _fill(template: str, groups: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)[+*]?\}", lambda m: groups[m.group(1)], template)


def rename(name: str, source_template: str, target_template: str) -> str | None:
    """`name` rewritten from one template to another, or None if it does not fit the source."""
    match = _pattern(source_template).match(name)
    return _fill(target_template, match.groupdict()) if match else None


def _translate(name: str, table, src: str, dst: str, known: set[str]):
    for row in table:
        match = _pattern(getattr(row, src)).match(name)
        if match:
            target = _fill(getattr(row, dst), match.groupdict())
            if target in known:
                return target, row.transpose
    return None


def hf_to_ours(family: str, hf_name: str, our_paths: set[str]) -> tuple[str, bool] | None:
    """Our path for an HF tensor (and whether to transpose), trying with and without the base prefix."""
    prefix = BASE_PREFIX[family]
    for candidate in (hf_name, prefix + hf_name, hf_name.removeprefix(prefix)):
        found = _translate(candidate, TABLES[family], "hf", "ours", our_paths)
        if found:
            return found
    return None


def ours_to_hf(family: str, path: str) -> tuple[str, bool]:
    """The HF tensor name for one of our parameter paths."""
    for row in TABLES[family]:
        match = _pattern(row.ours).match(path)
        if match:
            return _fill(row.hf, match.groupdict()), row.transpose
    raise KeyError(f"no Hugging Face name for parameter {path!r} ({family})")


def is_ignored(family: str, hf_name: str) -> bool:
    return any(re.match(p, hf_name) for p in IGNORED[family])
