"""A model folder's own code never runs: `refuse_custom_code` checks a folder (an HF model folder, or the
one beside a GGUF file) before transformers reads its tokenizer. Below load.py and gguf.py, which both call it.
"""

from __future__ import annotations

import json
import os

from jaxlm.errors import warn
from jaxlm.hf.errors import CheckpointError


def refuse_custom_code(folder: str) -> None:
    """Raises CheckpointError if loading `folder` would need Python code that came with it; warns when an
    `auto_map` there is ignored.

    transformers imports the module an `auto_map` names, or a tokenizer class it does not know, from the
    folder itself (after asking on stdin): code from a download. With `trust_remote_code=False` it uses its
    own class whenever tokenizer_config.json names one it knows, whatever `auto_map` says; many real
    checkpoints (Phi-3's config.json, say) keep an `auto_map` from before transformers supported them, and
    jaxlm builds the model from its own registry row. So only a folder whose tokenizer needs its own code
    is refused, before transformers reads it.
    """
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    tokenizer_config = os.path.join(folder, "tokenizer_config.json")
    tokenizer_class = _json_object(tokenizer_config).get("tokenizer_class")
    if tokenizer_class is not None and (not isinstance(tokenizer_class, str)
                                        or tokenizer_class_from_name(tokenizer_class) is None):
        raise CheckpointError(f"{tokenizer_config}: tokenizer_class={tokenizer_class!r} is not a transformers "
                              "tokenizer; jaxlm never runs code that comes with a model")
    for name in ("config.json", "tokenizer_config.json"):
        path = os.path.join(folder, name)
        auto_map = _json_object(path).get("auto_map")
        if auto_map is None:
            continue
        if tokenizer_class is None and (not isinstance(auto_map, dict) or "AutoTokenizer" in auto_map):
            raise CheckpointError(f"{path}: 'auto_map' asks to run Python code from the model folder "
                                  f"({_named_code(auto_map)}); jaxlm never runs code that comes with a model "
                                  "(name a transformers tokenizer_class in tokenizer_config.json instead)")
        warn(f"{path}: 'auto_map' ({_named_code(auto_map)}) is ignored: jaxlm never runs code that comes with a "
             f"model; the tokenizer is transformers' {tokenizer_class or 'own'} and the model jaxlm's")


def _json_object(path: str) -> dict:
    """A settings file's JSON object; {} when the file is absent."""
    try:
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return settings


def _named_code(auto_map) -> str:
    if not isinstance(auto_map, dict):
        return repr(auto_map)
    return ", ".join(f"{auto}: {target}" for auto, target in auto_map.items())
