"""Experiment: a mixture of experts' train step with its experts split over mesh.expert, the tokens sent
to them all-to-all (models/expert_parallel.py) against XLA's own placement of the same split (GSPMD
gathers every layer's experts onto every device), on fake CPU devices or whatever devices are here.

    PYTHONPATH=. python scripts/experiments/exp_expert_parallel.py [--devices 4] [--expert 4] [--fsdp 1]
        [--batch 8] [--seq 128] [--hidden 128] [--experts 8] [--expert-size 256] [--top-k 2] [--steps 5]

Both sides are the same random-init Mixtral-shaped model, config and batches, built by `build_engine`;
only the model's `Execution.expert_axis` differs ("expert" / ""). Each side's step is compiled first,
then the steps alternate (A B A B ...) so that load on a shared machine falls on both; printed: the
collectives each compiled step holds and its temporary memory per device (XLA's memory analysis), the first
losses (equal), median tokens/s per side and their ratio.
On fake CPU devices every "device" shares the same cores, so the ratio says more about the work each
side does (gathering experts vs exchanging rows) than about a real machine's speed.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=4, help="fake CPU devices (ignored on an accelerator)")
    parser.add_argument("--expert", type=int, default=4, help="mesh.expert")
    parser.add_argument("--fsdp", type=int, default=1, help="mesh.fsdp")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--expert-size", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    flag = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()  # before JAX starts

    import dataclasses

    import jax
    from flax import nnx

    from jaxlm.models import architecture_for
    from jaxlm.models.contract import configure
    from jaxlm.train.config import load_config
    from jaxlm.train.engine import build_engine
    from jaxlm.train.inputs import prepare_model

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench_train import batches

    hf = dict(model_type="mixtral", architectures=["MixtralForCausalLM"], vocab_size=512, hidden_size=args.hidden,
              intermediate_size=args.expert_size, num_hidden_layers=args.layers, num_attention_heads=4,
              num_key_value_heads=2, num_local_experts=args.experts, num_experts_per_tok=args.top_k,
              rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096, sliding_window=None,
              tie_word_embeddings=False)
    cfg = load_config(None, ["task=causal_lm", f"train.batch_size={args.batch}", f"train.seq_len={args.seq}",
                             "train.warmup_steps=0", "data.pack=false", f"mesh.expert={args.expert}",
                             f"mesh.fsdp={args.fsdp}"])
    arch = architecture_for(hf)
    data = batches(args.batch, args.seq, hf["vocab_size"])
    engines = {}
    for side, axis in (("all-to-all", "expert"), ("gspmd", "")):
        model = prepare_model(arch.model_cls(arch.family.config.from_hf(hf), rngs=nnx.Rngs(0)), cfg)
        configure(model, dataclasses.replace(model.execution, expert_axis=axis))
        engine = build_engine(model, cfg)
        began = time.perf_counter()
        engine.compile(data[0])
        compiled = engine.train_step
        text = compiled.as_text()
        gathered = sorted(set(re.findall(r"(f32\[[\d,]+\])\S* all-gather\(", text)))
        memory = compiled.memory_analysis()
        print(f"{side}: compiled in {time.perf_counter() - began:.1f}s; {text.count('all-to-all(')} all-to-all, "
              f"all-gathers of {', '.join(gathered) or 'nothing'}; temporaries {memory.temp_size_in_bytes / 2**20:.1f}"
              " MiB per device")
        engines[side] = engine
    losses = {side: float(engine.step(data[0])["loss"]) for side, engine in engines.items()}  # warm-up
    print("first step's loss:", losses)
    times: dict[str, list[float]] = {side: [] for side in engines}
    for i in range(args.steps):
        for side, engine in engines.items():
            began = time.perf_counter()
            jax.block_until_ready(engine.step(data[(i + 1) % len(data)]))
            times[side].append(time.perf_counter() - began)
    rate = {side: args.batch * args.seq / statistics.median(t) for side, t in times.items()}
    for side in engines:
        print(f"{side}: {rate[side]:,.0f} tokens/s (median of {args.steps} steps)")
    print(f"all-to-all / gspmd tokens/s: {rate['all-to-all'] / rate['gspmd']:.2f}x on {len(jax.devices())} "
          f"{jax.devices()[0].platform} devices, mesh.expert={args.expert} mesh.fsdp={args.fsdp}, {args.experts} "
          f"experts of {args.expert_size}, top {args.top_k}, hidden {args.hidden}, {args.layers} layers")


if __name__ == "__main__":
    main()
