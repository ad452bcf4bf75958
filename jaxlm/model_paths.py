"""What a model argument names, for every command and config key that takes one (`model.path`,
`train.distill.teacher`, a reward model, `--model` of generate, serve, eval, synth, `convert SRC`).

`smollm2` is the shipped SmolLM2-135M-Instruct GGUF; `pkg:PACKAGE/rel/path` a file inside an installed
package (found without importing it); `~` is expanded; a training run's output folder stands for the
merged model it exported to `hf/` (a prompt-tuning run's `hf/` is the base model, its virtual tokens
are in `adapter/`). Whether the result exists is each caller's to say, naming its own option.
"""

from __future__ import annotations

import os

from jaxlm import assets

SHIPPED = "smollm2"


def resolve(spec: str) -> str:
    """The HF folder or .gguf file `spec` names (see the module docstring); AssetMissing for a package or
    shipped model that is not installed."""
    if spec == SHIPPED:
        return assets.smollm2_gguf()
    if spec.startswith("pkg:"):
        package, _, rel = spec[4:].partition("/")
        return assets.package_file(package, *rel.split("/"))
    return run_export(os.path.expanduser(spec))


def run_export(src: str) -> str:
    """A training run's output folder stands for the merged model it exported to `hf/`; other paths unchanged."""
    run_hf = os.path.join(src, "hf")
    if os.path.isdir(src) and not os.path.exists(os.path.join(src, "config.json")) and os.path.isdir(run_hf):
        return run_hf
    return src


def prompt_tuning_adapter(src: str) -> str | None:
    """A prompt-tuning run's `adapter/` folder (its virtual tokens; its hf/ holds only the base model)."""
    config = os.path.join(src, "adapter", "adapter_config.json")
    if not os.path.isfile(config) or run_export(src) == src:
        return None
    with open(config, encoding="utf-8") as f:
        return os.path.dirname(config) if '"PROMPT_TUNING"' in f.read() else None


def run_task(src: str) -> str | None:
    """The task a training run's output folder was trained for (its config.yaml), else None."""
    saved = os.path.join(src, "config.yaml")
    if run_export(src) == src or not os.path.isfile(saved):
        return None
    import yaml

    with open(saved, encoding="utf-8") as f:
        return (yaml.safe_load(f) or {}).get("task")
