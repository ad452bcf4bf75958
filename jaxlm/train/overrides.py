"""Config dataclasses from mappings: a YAML preset or `dotted.key=value` overrides merged into the
defaults, every key checked (unknown keys get a did-you-mean), every value coerced to its field's type
(a bare path is a source of weight 1; `q,v` is a list of strings; YAML 1.1's `3e-4` is a float).
Errors are ConfigErrors naming the dotted key."""

from __future__ import annotations

import dataclasses
import difflib
import typing

from jaxlm.data.config import SourceConfig
from jaxlm.errors import ConfigError


def nest(keys: list[str], value) -> dict:
    """["a", "b"], v -> {"a": {"b": v}}."""
    return {keys[0]: nest(keys[1:], value)} if len(keys) > 1 else {keys[0]: value}


def flat(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": v}} -> {"a.b": v}: the inverse of `nest`."""
    found = {}
    for name, sub in tree.items():
        found.update(flat(sub, f"{prefix}{name}.") if isinstance(sub, dict) else {prefix + name: sub})
    return found


def merge(tree: dict, update: dict, cls, prefix: str) -> None:
    """Merge `update` into `tree` (asdict of `cls`), failing on unknown keys."""
    hints = typing.get_type_hints(cls)
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in hints:
            valid = [f"{prefix}{k}" for k in hints]
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys here: {', '.join(valid)}"
            raise ConfigError(f"unknown config key {name!r}{hint}")
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            merge(tree[key], value, hints[key], prefix=f"{name}.")
        else:
            tree[key] = value


def build(cls, tree: dict, prefix: str):
    """An instance of dataclass `cls` from `tree` (asdict-shaped), each value coerced to its field's type."""
    hints = typing.get_type_hints(cls)
    kwargs = {k: coerce(f"{prefix}{k}", hints[k], v) for k, v in tree.items()}
    return cls(**kwargs)


def coerce(name: str, hint, value):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, str) and hint is SourceConfig:  # a bare path is a source of weight 1
            value = {"path": value}
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        tree = dataclasses.asdict(hint(**{f.name: value[f.name] for f in dataclasses.fields(hint)
                                          if f.name in value and f.default is dataclasses.MISSING
                                          and f.default_factory is dataclasses.MISSING}))
        merge(tree, value, hint, prefix=f"{name}.")
        return build(hint, tree, prefix=f"{name}.")
    if origin is list:
        if not isinstance(value, list):
            if args and args[0] is str and isinstance(value, str):  # `model.lora.targets=q,v`
                value = [v.strip() for v in value.split(",") if v.strip()]
            else:
                raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [coerce(f"{name}[{i}]", args[0] if args else typing.Any, v) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{name}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value
