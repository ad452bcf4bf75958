"""XLA:CPU options A/B: jaxlm's train step compiled once per setting in ONE process, steps interleaved.

    PYTHONPATH=. python scripts/bench_xla_flags.py --modes full,lora

Each setting is a set of XLA debug options given to that one compilation (`compiler_options`, the same
fields XLA_FLAGS sets), so every setting runs in the same process under the same load, step after step in
turn (A B C A B C ...): on a shared, loaded machine that is the fair comparison. Per setting: the median
step's wall seconds and the process CPU seconds it took (user + system of all XLA threads), the compiled
temporaries (XLA's memory analysis: load does not touch it), and the loss and gradient norm of one step
from the same state, which must match the baseline's; on stderr, each setting's compile time (the compile
alone: `opt=0|1` and `llvm=cheap` ask LLVM for less work). The last line gives each setting's median step
time over the baseline's (< 1 is faster). SmolLM2-135M 4x256, float32; the settings `bf16...` build their own
engine with train.compute_dtype=bfloat16 (its loss may differ by rounding, up to 1 %), `chunk=N` theirs with
train.loss_chunk_tokens=N, `autodiff` its own with the linear layers' and LoRA's matmuls differentiated by
autodiff (as before `models.layers.dense`), and `attn=whole` its own with causal attention over the whole
[seq, seq] scores (as before `models.layers.causal_blocks`; compare it with `sched=memory`). `default` is
XLA's default schedule; jaxlm's train step itself compiles with `sched=memory` on a CPU (jaxlm/cpu_flags.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import COMMON_JAXLM, batches, hf_config, weights_path  # noqa: E402

SCHED = "xla_cpu_scheduler_type"
DEFAULT = {SCHED: "CPU_SCHEDULER_TYPE_DEFAULT"}
DOT = "LIBRARY_FUSION_TYPE_DOT"  # what XLA_FLAGS spells `=dot`
SETTINGS = {  # name -> XLA debug options for the train step's compilation
    "default": DEFAULT,
    "sched=memory": {SCHED: "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"},
    "sched=memory+ynn=dot": {SCHED: "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED", "xla_cpu_experimental_ynn_fusion_type": DOT},
    **{f"{lib}=dot": {**DEFAULT, f"xla_cpu_experimental_{lib}_fusion_type": DOT} for lib in ("ynn", "onednn", "xnn")},
    "ynn=off": {**DEFAULT, "xla_cpu_experimental_ynn_fusion_type": ""},  # dots to Eigen, the rest to XLA's emitters
    # cheaper compiles: LLVM at a lower optimisation level, or without its expensive passes
    **{f"opt={n}": {**DEFAULT, "xla_backend_optimization_level": n} for n in (0, 1)},
    "llvm=cheap": {**DEFAULT, "xla_llvm_disable_expensive_passes": True},
    "bf16": DEFAULT,
    "bf16+sched=memory": {SCHED: "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"},
    "autodiff": DEFAULT,
    "attn=whole": {SCHED: "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"},
    **{f"chunk={n}": DEFAULT for n in (128, 256, 512)},
}
# settings that change the run's config, each its own engine
OVERRIDES = {"bf16": ["train.compute_dtype=bfloat16"], "bf16+sched=memory": ["train.compute_dtype=bfloat16"],
             **{f"chunk={n}": [f"train.loss_chunk_tokens={n}"] for n in (128, 256, 512)}}
# settings that trace jaxlm's code as it was before a change (module, attribute, the old function), each its own
# engine: linear layers and LoRA's up-projection differentiated by autodiff, not by `layers.dense`'s backward pass
# `attn=whole`: causal attention over the whole [seq, seq] scores, as before `layers.causal_blocks`
VARIANTS = {"autodiff": ("jaxlm.models.layers", "dense", lambda x, kernel, thin=False: x @ kernel),
            "attn=whole": ("jaxlm.models.layers", "query_block", lambda length: length)}


def train_engine(mode: str, args, extra: tuple[str, ...] = ()):
    """(engine, its batches on the device, its lowered train step) for `mode` (full or lora: r16 on every
    projection) at args.batch x args.seq; `args.model` with its weights, or random (a shape without weights)."""
    import jax.numpy as jnp
    from flax import nnx

    import jaxlm
    from jaxlm.models import architecture_for
    from jaxlm.train.config import load_config
    from jaxlm.train.engine import build_engine
    from jaxlm.train.inputs import prepare_model

    shape = hf_config(args.model, False)
    cfg = load_config(None, ["task=causal_lm", f"train.batch_size={args.batch}", f"train.seq_len={args.seq}",
                             "train.warmup_steps=0", "train.learning_rate=1e-5",
                             f"model.lora.rank={16 if mode == 'lora' else 0}", *COMMON_JAXLM, *args.set, *extra])
    weights = weights_path(args.model, False)
    if weights:
        model, _ = jaxlm.load_pretrained(weights)
    else:
        arch = architecture_for(shape)
        model = arch.model_cls(arch.family.config.from_hf(shape), rngs=nnx.Rngs(0), param_dtype=jnp.float32)
    prepare_model(model, cfg, say=lambda line: None)
    engine = build_engine(model, cfg)
    data = [engine.put(b) for b in batches(args.batch, args.seq, shape["vocab_size"])]
    lowered = engine.train_step.lower(engine.state, engine.frozen, engine.rest, data[0], engine.reference,
                                      engine.teacher)
    return engine, data, lowered


def compare(mode: str, names: list[str], args) -> list[str]:
    import jax
    import jax.numpy as jnp

    built = {}  # (config overrides, code variant) -> (engine, its batches, its lowered train step)

    def key(name: str) -> tuple:
        return tuple(OVERRIDES.get(name, [])), name if name in VARIANTS else ""

    def engine_for(name: str):
        if key(name) not in built:
            with contextlib.ExitStack() as stack:
                if name in VARIANTS:
                    module, attribute, old = VARIANTS[name]
                    stack.enter_context(mock.patch(f"{module}.{attribute}", old))
                built[key(name)] = train_engine(mode, args, key(name)[0])  # traced here, under the variant
        return built[key(name)]

    compiled, temps, checks, states, runs = {}, {}, {}, {}, {}
    for name in names:
        engine, data, lowered = engine_for(name)
        began = time.perf_counter()  # the compile alone (the first setting's engine is built above)
        compiled[name] = lowered.compile(compiler_options=SETTINGS[name])
        temps[name] = compiled[name].memory_analysis().temp_size_in_bytes / 2**20
        print(f"  {mode} {name}: compiled in {time.perf_counter() - began:.0f}s", file=sys.stderr, flush=True)
        fixed = (engine.frozen, engine.rest)
        runs[name] = lambda state, batch, name=name, fixed=fixed, last=(engine.reference, engine.teacher): compiled[
            name](state, *fixed, batch, *last)
        # one step from the same state: the numbers must not change (beyond rounding, for a dtype setting)
        states[name], metrics = runs[name](jax.tree.map(jnp.copy, engine.state), data[0])
        checks[name] = float(metrics["loss"]), float(metrics["grad_norm"])
    walls, cpus = {n: [] for n in names}, {n: [] for n in names}
    for i in range(args.steps):
        for name in names:  # interleaved: load from other processes hits every setting alike
            data = built[key(name)][1]
            wall, cpu = time.perf_counter(), time.process_time()
            states[name], metrics = runs[name](states[name], data[(i + 1) % len(data)])
            jax.block_until_ready(metrics)
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    base = names[0]
    print(f"[{mode} {args.batch}x{args.seq}] {args.steps} interleaved steps per setting", flush=True)
    ratios = []
    for name in names:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        same = abs(checks[name][0] - checks[base][0]) <= (1e-2 if name in OVERRIDES else 1e-4) * abs(checks[base][0])
        print(f"  {name}: median step {wall:.2f} s wall, {cpu:.2f} CPU s, {args.batch * args.seq / wall:.0f} tok/s; "
              f"temporaries {temps[name]:.0f} MiB; loss {checks[name][0]:.6f}, grad norm {checks[name][1]:.4f}"
              f"{'' if same else ' (LOSS DIFFERS)'}", flush=True)
        ratios.append(f"{mode} {name} {wall / statistics.median(walls[base]):.2f} "
                      f"(CPU {cpu / statistics.median(cpus[base]):.2f})")
    return ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="default,sched=memory,ynn=dot",
                        help=f"comma-separated, the first is the baseline; of: {', '.join(SETTINGS)}")
    parser.add_argument("--modes", default="full,lora")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting")
    parser.add_argument("--model", default="smollm2-135m", help="a model with weights: smollm2-135m or a PATH")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a jaxlm config override")
    args = parser.parse_args()
    ratios = []
    for mode in args.modes.split(","):
        ratios += compare(mode, args.settings.split(","), args)
    print("RATIO median step time over the first setting's: " + "; ".join(ratios))


if __name__ == "__main__":
    main()
