"""Sources: where records come from, and which of them this host reads.

A source is a file or folder (see :mod:`jaxlm.data.records`) or a TFDS
dataset written ``tfds:NAME[/CONFIG][:SPLIT]`` (split defaults to ``train``;
slicing like ``train[:10%]`` works). TFDS examples are converted to the same
normalised records as JSONL lines (bytes -> str, sequences of dicts -> lists,
``ClassLabel`` ids -> their names, so a label reads the same from TFDS as from a file).

Host sharding: the k-th record of a source goes to host ``k % shard_count``,
so hosts read disjoint parts and together read everything. Every host still
parses the whole source, which is cheap next to tokenizing it.

Held-out evaluation (``eval_fraction``): a record is held out when a hash of
its content falls below the fraction, so the choice is stable across runs,
hosts and file order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator

import numpy as np

from jaxlm.data.config import SourceConfig
from jaxlm.data.records import DataError, ReadStats, Record, normalize_json, read_records

TFDS_PREFIX = "tfds:"


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which records of a source to keep: a host shard and a held-out part."""

    shard_index: int = 0
    shard_count: int = 1
    eval_fraction: float = 0.0
    split: str = "all"  # "all", "train" (minus held-out) or "eval" (held-out only)

    def keeps(self, position: int, record: Record) -> bool:
        if position % self.shard_count != self.shard_index:
            return False
        if self.split == "all" or self.eval_fraction <= 0:
            return self.split != "eval"
        return (held_out_unit(record) < self.eval_fraction) == (self.split == "eval")


def held_out_unit(record: Record) -> float:
    """A number in [0, 1) fixed by the record's content."""
    content = json.dumps(record.data, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return int.from_bytes(hashlib.sha256(content).digest()[:8], "big") / 2**64


def as_source_config(source) -> SourceConfig:
    """Accepts a SourceConfig, a path string, or a dict of SourceConfig fields."""
    if isinstance(source, SourceConfig):
        return source
    if isinstance(source, str):
        return SourceConfig(path=source)
    if isinstance(source, dict):
        return SourceConfig(**source)
    raise TypeError(f"a source is a SourceConfig, path or dict, got {type(source).__name__}")


def iter_records(source: SourceConfig, *, on_error: str = "raise", stats: ReadStats | None = None,
                 allowed_tags=None, tfds_data_dir: str | None = None) -> Iterator[Record]:
    if source.path.startswith(TFDS_PREFIX):
        yield from _tfds_records(source, on_error, stats or ReadStats(), tfds_data_dir)
    else:
        yield from read_records(source.path, format=source.format, fields=source.fields,
                                on_error=on_error, stats=stats, allowed_tags=allowed_tags)


def selected_records(source: SourceConfig, selection: Selection, **kwargs) -> Iterator[Record]:
    for position, record in enumerate(iter_records(source, **kwargs)):
        if selection.keeps(position, record):
            yield record


def record_to_json(record: Record) -> str:
    return json.dumps({"kind": record.kind, "data": record.data}, ensure_ascii=False)


def parse_tfds_path(path: str) -> tuple[str, str]:
    """``tfds:NAME/CONFIG:SPLIT`` -> (``NAME/CONFIG``, ``SPLIT``)."""
    name, _, split = path[len(TFDS_PREFIX):].partition(":")
    return name, split or "train"


def _tfds_records(source: SourceConfig, on_error: str, stats: ReadStats,
                  data_dir: str | None) -> Iterator[Record]:
    import tensorflow_datasets as tfds

    from jaxlm.data.builders import dataset_builder  # TFDS and our builders load only for tfds: sources

    name, split = parse_tfds_path(source.path)
    builder = dataset_builder(name, data_dir)
    builder.download_and_prepare()
    # Read once, front to back: TFDS's auto-cache would only warn when a reader stops early.
    dataset = builder.as_dataset(split=split, shuffle_files=False, read_config=tfds.ReadConfig(try_autocache=False))
    class_names = {key: feature.names for key, feature in builder.info.features.items()
                   if isinstance(feature, tfds.features.ClassLabel)}
    for index, example in enumerate(tfds.as_numpy(dataset)):
        example = {k: class_names[k][int(v)] if k in class_names else v for k, v in example.items()}
        try:
            kind, data = normalize_json(_to_python(example), source.fields)
        except ValueError as e:
            error = DataError(source.path, index, str(e))
            if on_error == "raise":
                raise error from None
            stats.note_error(error)
            continue
        stats.records += 1
        yield Record(source.path, index, kind, data)


def _to_python(example: dict) -> dict:
    """A tfds.as_numpy example -> a JSON-like dict."""
    return {key: _value(value) for key, value in example.items()}


def _value(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        # tfds gives Sequence({"role", "content"}) as {"role": array, "content": array}.
        columns = {k: _value(v) for k, v in value.items()}
        return [dict(zip(columns, row, strict=False)) for row in zip(*columns.values(), strict=False)]
    if isinstance(value, np.ndarray):
        return [_value(v) for v in value] if value.ndim else _value(value.item())
    if isinstance(value, np.generic):
        return value.item()
    return value
