"""How Hugging Face tensor names map onto our parameter paths: the mechanism behind each family's table.

A table (`Family.weights` in models/registry.py) is data: rows of (HF name template, our path
template, transpose). A template placeholder `{name}` matches one dotted segment, `{name+}`
several, `{name*}` any prefix. When an HF name fits several rows, the first whose target
parameter exists wins. HF `nn.Linear` stores weights as [out, in] and `nnx.Linear` as
[in, out], hence the transpose flag; GPT-2's `Conv1D` already stores [in, out].

A row with `parts` maps one HF tensor onto several of our parameters: its `ours` template has a
`{part}` placeholder, and the HF tensor is their concatenation, in `parts` order, along its first
axis (a Linear's output axis in HF's layout). Phi-3's fused `qkv_proj` and `gate_up_proj` are such
rows, split on load into the q/k/v and gate/up projections Llama's code runs, fused again on export.
A `stacked` row goes the other way: several HF tensors (one per expert) stack into one of ours.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax.numpy as jnp
import numpy as np

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
    parts: tuple[str, ...] = ()  # values of `{part}` in `ours`, in the order the HF tensor concatenates them


class Target(NamedTuple):
    """Where an HF tensor goes: our parameters (one, or a row's parts in the HF tensor's order), whether to
    transpose, and its index on the stacked axis."""

    paths: tuple[str, ...]
    transpose: bool
    index: int | None = None


class Source(NamedTuple):
    """The HF tensor that holds one of our parameters: its name ("*" where a stacked parameter's index
    goes), whether to transpose, and the parameters of ours it holds (a row's parts; else this one)."""

    hf: str
    transpose: bool
    ours: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class GGUFLayout:
    """A family's form in a llama.cpp GGUF file (`Family.gguf`): hf/gguf.py reads it, hf/gguf_export.py
    writes it; the functions live beside the family's model file (e.g. models/llama_gguf.py)."""

    arch: str  # llama.cpp's architecture name: `general.architecture` and the metadata keys' prefix
    # (GGUF tensor template, HF tensor template); {p}: weight or bias; a placeholder only the HF template has
    # ({e}) stacks the HF tensors on the GGUF tensor's first axis (llama.cpp's experts: `gguf_tensors`)
    names: tuple[tuple[str, str], ...]
    ignored: tuple[str, ...]  # GGUF tensors with no HF tensor, skipped when reading
    # (get(key, default=None), vocab size, {GGUF tensor name: its data as stored}) -> HF config.json dict
    hf_config: Callable
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


def _our_paths(row: Row, groups: dict[str, str]) -> tuple[str, ...]:
    if not row.parts:
        return (_fill(row.ours, groups),)
    return tuple(_fill(row.ours, {**groups, "part": part}) for part in row.parts)


def _target(row: Row, match: re.Match, known) -> Target | None:
    paths = _our_paths(row, match.groupdict())
    if not all(path in known for path in paths):
        return None
    return Target(paths, row.transpose, None if row.stacked is None else int(match.group(row.stacked)))


def rename(name: str, source_template: str, target_template: str) -> str | None:
    """`name` rewritten from one template to another, or None if it does not fit the source."""
    match = _pattern(source_template).match(name)
    return _fill(target_template, match.groupdict()) if match else None


def hf_to_ours(family: Family, hf_name: str, our_paths) -> Target | None:
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
        if match and (not row.parts or match.group("part") in row.parts):
            return row, match.groupdict()
    raise KeyError(f"no Hugging Face name for parameter {path!r} ({family.model_type})")


def ours_to_hf(family: Family, path: str) -> Source:
    """The HF tensor that holds one of our parameters; a stacked parameter's name has "*" where its index
    goes (for messages; `to_hf` gives each)."""
    row, groups = _row_for(family, path)
    ours = _our_paths(row, groups)
    if row.stacked is not None:
        groups = {**groups, row.stacked: "*"}
    return Source(_fill(row.hf, groups), row.transpose, ours)


def to_hf(family: Family, params) -> dict[str, Any]:
    """{HF name: array in HF layout} for (our path, array) pairs: a stacked parameter gives one tensor per
    index, a row's parts are concatenated into one."""
    params = dict(params)
    out = {}
    for path, value in params.items():
        row, groups = _row_for(family, path)
        if row.parts:
            name = _fill(row.hf, groups)
            if name not in out:
                pieces = [params[p] for p in _our_paths(row, groups)]
                out[name] = jnp.concatenate([p.T if row.transpose else p for p in pieces], axis=0)
        elif row.stacked is None:
            out[_fill(row.hf, groups)] = value.T if row.transpose else value
        else:
            out.update((_fill(row.hf, {**groups, row.stacked: str(i)}), part.T if row.transpose else part)
                       for i, part in enumerate(value))
    return out


def split_hf(array, target: Target, our_shapes) -> list | None:
    """An HF tensor as our parameters' arrays (transposed where the row says), or None if its shape is not
    theirs together. `our_shapes[path]` is each parameter's shape in our layout (one index's, if stacked)."""
    in_file = [tuple(our_shapes[p])[::-1] if target.transpose else tuple(our_shapes[p]) for p in target.paths]
    if tuple(array.shape) != fused_shape(in_file):
        return None
    pieces = np.split(array, np.cumsum([s[0] for s in in_file])[:-1], axis=0) if len(in_file) > 1 else [array]
    return [piece.T if target.transpose else piece for piece in pieces]


def fused_shape(shapes: list[tuple]) -> tuple:
    """The shape of HF tensors of these shapes concatenated on their first axis."""
    return (sum(s[0] for s in shapes), *shapes[0][1:]) if len(shapes) > 1 else shapes[0]


def is_ignored(family: Family, hf_name: str) -> bool:
    return any(re.match(p, hf_name) for p in family.ignored)


def gguf_name(hf_name: str, table: tuple[tuple[str, str], ...]) -> str:
    """The GGUF name of an HF tensor, from a `GGUFLayout.names` table."""
    for gguf_template, hf_template in table:
        found = rename(hf_name, hf_template, gguf_template)
        if found:
            return found
    raise UserError(f"tensor {hf_name!r} has no GGUF name")


def gguf_tensors(hf: dict[str, Any], table: tuple[tuple[str, str], ...]):
    """(GGUF name, array) for {HF name: array}, in the HF tensors' order. HF tensors whose template has a
    placeholder that the GGUF template lacks (`{e}`: llama.cpp stacks a layer's experts into one `*_exps`
    tensor) stack, in that placeholder's order, into one GGUF tensor."""
    out: dict[str, Any] = {}
    for hf_name, array in hf.items():
        for gguf_template, hf_template in table:
            match = _pattern(hf_template).match(hf_name)
            if match:
                name = _fill(gguf_template, match.groupdict())
                stacked = _stacked_placeholder(gguf_template, hf_template)
                if stacked is None:
                    out[name] = array
                else:
                    out.setdefault(name, {})[int(match.group(stacked))] = array
                break
        else:
            raise UserError(f"tensor {hf_name!r} has no GGUF name")
    for name, value in out.items():
        yield name, np.stack([value[i] for i in range(len(value))]) if isinstance(value, dict) else value


def hf_name_of_gguf(name: str, table: tuple[tuple[str, str], ...]) -> tuple[str, str | None] | None:
    """The HF name of a GGUF tensor and None, or for a tensor that stacks several HF ones (see `gguf_tensors`)
    their name with the stacking placeholder left in, and that placeholder; None for a name not in `table`."""
    for gguf_template, hf_template in table:
        match = _pattern(gguf_template).match(name)
        if match:
            stacked = _stacked_placeholder(gguf_template, hf_template)
            groups = match.groupdict() if stacked is None else {**match.groupdict(), stacked: "{" + stacked + "}"}
            return _fill(hf_template, groups), stacked
    return None


def _stacked_placeholder(gguf_template: str, hf_template: str) -> str | None:
    ours = set(_pattern(gguf_template).groupindex)
    return next((p for p in _pattern(hf_template).groupindex if p not in ours), None)
