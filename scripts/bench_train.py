"""Training throughput: jaxlm vs transformers (PyTorch + torch.optim.AdamW) on SmolLM2-135M.

    .venv/bin/python scripts/bench_train.py [--steps 6] [--batch 4] [--seq 256] [--modes full,lora]

Same model weights, batch, sequence length and optimizer settings on both sides. Prints per mode:
tokens/s after warm-up for both, their ratio, MFU against this machine's measured float32 matmul
peak, peak resident memory, and compile time (jaxlm) separately. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np

from jaxlm import assets


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Best observed float32 GEMM rate (jax), the denominator of MFU."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def batch(seed, b, t, vocab):
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab, size=(b, t + 1)).astype(np.int32)
    ones = np.ones((b, t), np.int32)
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": ones, "segment_ids": ones,
            "positions": np.broadcast_to(np.arange(t), (b, t)).astype(np.int32)}


def bench_jaxlm(gguf, mode, steps, b, t):
    import jax

    import jaxlm
    from jaxlm.models.lora import apply_lora
    from jaxlm.train.config import load_config
    from jaxlm.train.engine import build_engine

    rank = 16 if mode == "lora" else 0
    cfg = load_config(None, ["task=causal_lm", f"train.batch_size={b}", f"train.seq_len={t}", "train.warmup_steps=0",
                             "train.learning_rate=1e-5", f"model.lora.rank={rank}"])
    model, _ = jaxlm.load_pretrained(gguf)
    if rank:
        apply_lora(model, cfg.model.lora.targets, rank, cfg.model.lora.alpha)
    engine = build_engine(model, cfg)
    vocab = model.config.vocab_size
    began = time.perf_counter()
    engine.compile(batch(0, b, t, vocab))
    compile_s = time.perf_counter() - began
    jax.block_until_ready(engine.step(batch(0, b, t, vocab)))  # warm-up
    began = time.perf_counter()
    for i in range(steps):
        metrics = engine.step(batch(i + 1, b, t, vocab))
    jax.block_until_ready(metrics)
    return steps * b * t / (time.perf_counter() - began), compile_s


def bench_torch(gguf, mode, steps, b, t):
    import torch
    import transformers

    import jaxlm

    with tempfile.TemporaryDirectory() as folder:  # the same dequantised weights, as an HF folder
        model, _ = jaxlm.load_pretrained(gguf)
        jaxlm.export_pretrained(model, folder)
        del model
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    hf.train()
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        hf = get_peft_model(hf, LoraConfig(r=16, lora_alpha=32, target_modules=targets, lora_dropout=0.0))
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
    vocab = hf.config.vocab_size

    def step(i):
        data = batch(i, b, t, vocab)
        ids, targets = torch.tensor(data["input_ids"]).long(), torch.tensor(data["targets"]).long()
        logits = hf(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # warm-up
    began = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    return steps * b * t / (time.perf_counter() - began)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--modes", default="full,lora")
    parser.add_argument("--side", choices=["jaxlm", "torch"], help=argparse.SUPPRESS)  # internal: one side per process
    args = parser.parse_args()
    gguf = assets.smollm2_gguf()
    if args.side:  # child process: one side, one mode, so peak memory is its own
        mode = args.modes
        if args.side == "jaxlm":
            tps, compile_s = bench_jaxlm(gguf, mode, args.steps, args.batch, args.seq)
            print(f"RESULT {tps} {compile_s} {peak_rss_gb()}")
        else:
            import torch

            print(f"RESULT {bench_torch(gguf, mode, args.steps, args.batch, args.seq)} 0 {peak_rss_gb()} "
                  f"{torch.get_num_threads()}")
        return
    import subprocess
    import sys

    peak = matmul_peak_flops()
    n_params = 134.5e6
    print(f"SmolLM2-135M, batch {args.batch} x {args.seq}, {args.steps} timed steps after 1 warm-up; "
          f"measured float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    for mode in args.modes.split(","):
        results = {}
        for side in ("jaxlm", "torch"):
            cmd = [sys.executable, __file__, "--side", side, "--modes", mode, "--steps", str(args.steps),
                   "--batch", str(args.batch), "--seq", str(args.seq)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
            if not line:
                raise SystemExit(f"{side}/{mode} failed:\n{out.stderr[-3000:]}")
            results[side] = [float(v) for v in line[0].split()[1:4]]
        # 6N FLOPs per token for full fine-tuning; LoRA skips the weight gradients (~4N).
        flops_per_token = (6 if mode == "full" else 4) * n_params
        (jt, jc, jm), (tt, _, tm) = results["jaxlm"], results["torch"]
        print(f"[{mode}] jaxlm {jt:.0f} tok/s (MFU {jt * flops_per_token / peak:.1%}, compile {jc:.1f}s, "
              f"peak RSS {jm:.2f} GB) | torch {tt:.0f} tok/s (MFU {tt * flops_per_token / peak:.1%}, "
              f"peak RSS {tm:.2f} GB) | ratio jaxlm/torch {jt / tt:.2f}")


if __name__ == "__main__":
    main()
