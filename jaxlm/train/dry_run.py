"""`python -m jaxlm.train ... --dry-run`: will this config fit, and what will a step cost?

The model is built abstractly (`nnx.eval_shape`: shapes and dtypes from config.json or the GGUF
header, no weights read), the train step is lowered on abstract arguments with the run's
shardings and compiled, and XLA's own analyses are reported: the memory of the compiled step
per device (arguments, outputs, temporaries) and its FLOPs. Nothing else happens: no data is
read, nothing is trained, nothing is written.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.tasks import sequences_per_example
from jaxlm.train.config import Config, resolve_path


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _flops(n: float) -> str:
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} FLOP"


def abstract_model(cfg: Config):
    """The run's model (task head, LoRA) as shapes only."""
    from jaxlm.hf.load import read_hf_config
    from jaxlm.tasks import LABELLED_TASKS
    from jaxlm.train.inputs import configured_labels, head_for, prepare_model

    path = resolve_path(cfg.model.path)
    hf = read_hf_config(path)
    labels = None
    if cfg.task in LABELLED_TASKS:  # the label set comes from the data; its size barely matters here
        labels = configured_labels(cfg) or list((hf.get("id2label") or {"0": "O", "1": "B-ENTITY"}).values())
    head = head_for(cfg, labels, hf, path)
    hf = {**hf, **head["config_overrides"]}
    if head["architecture"]:
        hf["architectures"] = [head["architecture"]]
    return _abstract(hf, path, jnp.dtype(cfg.model.dtype), lambda model: prepare_model(model, cfg))


def abstract_teacher(cfg: Config):
    """train.distill's teacher as shapes only (None without one): the step holds it beside the model."""
    from jaxlm.hf.load import read_hf_config
    from jaxlm.train.inputs import teacher_path

    if not cfg.train.distill.teacher:
        return None
    path = teacher_path(cfg)
    return _abstract(read_hf_config(path), path, jnp.dtype(cfg.model.dtype), lambda model: model.eval() or model)


def _abstract(hf: dict, path: str, dtype, prepare):
    from jaxlm.models import architecture_for

    arch = architecture_for(hf, path)
    config = arch.family.config.from_hf(hf)
    return nnx.eval_shape(lambda: prepare(arch.model_cls(config, rngs=nnx.Rngs(0), param_dtype=dtype)))


def dry_run(cfg: Config) -> dict:
    """Compile the train step for `cfg` on abstract shapes; XLA's memory (bytes per device) and FLOPs."""
    from jaxlm.train.engine import lower_train_step, trainable_filter
    from jaxlm.train.state import count_params

    model = abstract_model(cfg)
    began = time.perf_counter()
    compiled = lower_train_step(model, cfg, teacher=abstract_teacher(cfg)).compile()
    seconds = time.perf_counter() - began
    memory = compiled.memory_analysis()
    assert memory is not None  # XLA's CPU, GPU and TPU backends all report it
    cost = compiled.cost_analysis()
    if cfg.model.scan_layers:  # XLA counts a loop body once: count FLOPs on the unrolled twin (lowered only)
        twin = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_layers=False))
        cost = lower_train_step(abstract_model(twin), twin, teacher=abstract_teacher(twin)).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per device program
    figures = {
        "arguments": memory.argument_size_in_bytes,
        "outputs": memory.output_size_in_bytes,
        "aliased": memory.alias_size_in_bytes,  # outputs written over donated arguments (the train state)
        "temporaries": memory.temp_size_in_bytes,
        "code": memory.generated_code_size_in_bytes,
    }
    # What the step needs at most: live arguments, new outputs (less those donated in place), scratch.
    figures["total"] = figures["arguments"] + figures["outputs"] - figures["aliased"] + figures["temporaries"]
    return dict(figures, flops=float((cost or {}).get("flops", 0.0)), compile_seconds=seconds,
                devices=jax.device_count(), params=count_params(nnx.state(model, nnx.Param)),
                trainable=count_params(nnx.state(model, trainable_filter(cfg))), model=type(model).__name__)


def describe(report: dict, cfg: Config) -> str:
    t = cfg.train
    size = lambda key: _bytes(report[key])  # noqa: E731
    # a preference pair: 2 sequences; a grpo prompt: its group of completions
    pair = cfg.grpo.group_size if cfg.task == "grpo" else sequences_per_example(cfg.task)
    rows = f"{t.batch_size} x {pair}" if pair > 1 else f"{t.batch_size}"
    return "\n".join([
        f"dry run: {report['model']}, {report['params']:,} parameters ({report['trainable']:,} trained), "
        f"batch {rows} x {t.seq_len} (grad_accum {t.grad_accum}), compute {t.compute_dtype}, "
        f"{report['devices']} device(s); attention {cfg.model.attention}, scan_layers {cfg.model.scan_layers}, "
        f"remat {cfg.model.remat}, loss_chunk_tokens {t.loss_chunk_tokens}",
        f"compiled the train step in {report['compile_seconds']:.1f}s",
        f"memory per device: arguments {size('arguments')}, outputs {size('outputs')} "
        f"({size('aliased')} of them in place of donated arguments), temporaries {size('temporaries')}, "
        f"code {size('code')}; the step needs {size('total')}",
        f"FLOPs per step: {_flops(report['flops'])} per device (XLA cost analysis"
        f"{' of the unrolled twin' if cfg.model.scan_layers else ''}), "
        f"{_flops(report['flops'] * report['devices'] / (t.batch_size * pair * t.seq_len))} per token",
        "nothing was loaded, trained or written",
    ])
