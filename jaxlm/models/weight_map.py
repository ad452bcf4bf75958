"""How Hugging Face tensor names map onto our parameter paths: the mechanism behind each family's table.

A table (`Family.weights` in models/registry.py) is data: rows of (HF name template, our path
template, transpose). A template placeholder `{name}` matches one dotted segment, `{name+}`
several, `{name*}` any prefix. When an HF name fits several rows, the first whose target
parameter exists wins. HF `nn.Linear` stores weights as [out, in] and `nnx.Linear` as
[in, out], hence the transpose flag; GPT-2's `Conv1D` already stores [in, out].
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from jaxlm.errors import UserError

if TYPE_CHECKING:  # for type hints only: registry.py builds its rows from Row, so it imports this module
    from jaxlm.models.registry import Family


class Row(NamedTuple):
    hf: str
    ours: str
    transpose: bool = False
    # A placeholder of `hf` that indexes the leading axis of our parameter: several HF tensors stack into
    # one (e.g. "e" for mixture-of-experts weights, one HF tensor per expert).
    stacked: str | None = None


class Target(NamedTuple):
    """Where an HF tensor goes: our parameter path, whether to transpose, and its index on the stacked axis."""

    path: str
    transpose: bool
    index: int | None = None


@dataclasses.dataclass(frozen=True)
class GGUFLayout:
    """A family's form in a llama.cpp GGUF file (`Family.gguf`): hf/gguf.py reads it, hf/gguf_export.py
    writes it; the functions live beside the family's model file (e.g. models/llama_gguf.py)."""

    arch: str  # llama.cpp's architecture name: `general.architecture` and the metadata keys' prefix
    names: tuple[tuple[str, str], ...]  # (GGUF tensor template, HF tensor template); {p}: weight or bias
    ignored: tuple[str, ...]  # GGUF tensors with no HF tensor, skipped when reading
    hf_config: Callable  # (get(key, default=None), vocab size, GGUF tensor names) -> HF config.json dict
    from_gguf: Callable  # (GGUF name, array as the file lays it out, HF config dict) -> array in HF layout
    write_metadata: Callable  # (gguf.GGUFWriter, our config) -> None; UserError for what llama.cpp cannot run
    to_gguf: Callable  # ({HF name: array}, our config) -> (GGUF name, array) for every tensor, in file order
    # (arch, vocab key, HF config dict) -> [(metadata key, the size it gives, a tensor of that size, its axis in
    # numpy order)]: checked against the file's tensors before a model of those sizes is built
    sizes: Callable


def dotted(path: tuple) -> str:
    """An nnx state path such as ('layers', 0, 'mlp') as the dotted name the tables use."""
    return ".".join(map(str, path))


@functools.cache
def _pattern(template: str) -> re.Pattern:
    regex = re.escape(template)
    regex = re.sub(r"\\\{(\w+)\\\+\\\}", r"(?P<\1>.+)", regex)  # {name+}: dotted path
    regex = re.sub(r"\\\{(\w+)\\\*\\\}", r"(?P<\1>.*)", regex)  # {name*}: possibly empty
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^.]+)", regex)  # {name}: one segment
    return re.compile(regex + "$")


def _fill(template: str, groups: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)[+*]?\}", lambda m: groups[m.group(1)], template)


def _target(row: Row, match: re.Match, known: set[str]) -> Target | None:
    path = _fill(row.ours, match.groupdict())
    if path not in known:
        return None
    return Target(path, row.transpose, None if row.stacked is None else int(match.group(row.stacked)))


def rename(name: str, source_template: str, target_template: str) -> str | None:
    """`name` rewritten from one template to another, or None if it does not fit the source."""
    match = _pattern(source_template).match(name)
    return _fill(target_template, match.groupdict()) if match else None


def hf_to_ours(family: Family, hf_name: str, our_paths: set[str]) -> Target | None:
    """Where an HF tensor goes among `our_paths`, trying with and without the base prefix."""
    prefix = family.base_prefix
    for candidate in (hf_name, prefix + hf_name, hf_name.removeprefix(prefix)):
        for row in family.weights:
            match = _pattern(row.hf).match(candidate)
            found = match and _target(row, match, our_paths)
            if found:
                return found
    return None


def _row_for(family: Family, path: str) -> tuple[Row, dict[str, str]]:
    for row in family.weights:
        match = _pattern(row.ours).match(path)
        if match:
            return row, match.groupdict()
    raise KeyError(f"no Hugging Face name for parameter {path!r} ({family.model_type})")


def ours_to_hf(family: Family, path: str) -> tuple[str, bool]:
    """The HF tensor name for one of our parameter paths (and whether to transpose); a stacked
    parameter's name has "*" where its index goes (for messages; `hf_tensors` gives each)."""
    row, groups = _row_for(family, path)
    if row.stacked is not None:
        groups = {**groups, row.stacked: "*"}
    return _fill(row.hf, groups), row.transpose


def hf_tensors(family: Family, path: str, value) -> list[tuple[str, Any]]:
    """(HF name, array in HF layout) for one of our parameters: one pair, or one per index of a stacked one."""
    row, groups = _row_for(family, path)
    if row.stacked is None:
        return [(_fill(row.hf, groups), value.T if row.transpose else value)]
    return [(_fill(row.hf, {**groups, row.stacked: str(i)}), part.T if row.transpose else part)
            for i, part in enumerate(value)]


def is_ignored(family: Family, hf_name: str) -> bool:
    return any(re.match(p, hf_name) for p in family.ignored)


def gguf_name(hf_name: str, table: tuple[tuple[str, str], ...]) -> str:
    """The GGUF name of an HF tensor, from a `GGUFLayout.names` table."""
    for gguf_template, hf_template in table:
        found = rename(hf_name, hf_template, gguf_template)
        if found:
            return found
    raise UserError(f"tensor {hf_name!r} has no GGUF name")
