"""Training throughput: jaxlm's own train step vs transformers + PyTorch, on whatever device is here.

    PYTHONPATH=. python scripts/bench_train.py [--steps 5] [--batch 4] [--seq 256] [--modes full,lora]
    PYTHONPATH=. python scripts/bench_train.py --model llama-1b --random-init --batch 8 --seq 1024
    PYTHONPATH=. python scripts/bench_train.py --suite gpu      # every GPU case, ~8 minutes on one H100/H200
    PYTHONPATH=. python scripts/bench_train.py --suite gpu --model tiny --batch 2 --seq 64   # CPU smoke test
    PYTHONPATH=. python scripts/bench_train.py --suite gpu --cases 5,6  # the mixtures of experts alone

`--model` is smollm2-135m (the shipped GGUF weights, or its shape with `--random-init`), llama-1b
(the 1.1B TinyLlama shape: hidden 2048, 22 layers, 32 heads / 4 KV, MLP 5632, vocab 32000), qwen3-0.6b
(Qwen/Qwen3-0.6B's shape), gemma3-1b (google/gemma-3-1b-pt's: 26 layers, five sliding-window layers of 512
tokens to a global one, vocab 262144), the mixtures of experts qwen3-30b-a3b-2l (Qwen3-30B-A3B's width, 128
experts of 768, top 8, with 2 of its 48 layers) and mixtral-8x7b-1l (Mixtral-8x7B's, 8 experts of 14336, top 2,
with 1 of its 32 layers), all always random; tiny (2 layers, hidden 64; random; for smoke tests; tiny-moe the
same as a Qwen3-MoE) or a PATH to an HF folder / .gguf. A mixture's MFU counts the parameters a token uses
(its k experts of each layer). Both sides train the same shapes, batch and optimizer
(AdamW, float32 master weights; clip 1.0). jaxlm runs `build_engine`'s jitted step; PyTorch runs the
family's transformers class with sdpa attention (peft LoRA r16
on every projection for `lora`), under torch.autocast(bfloat16) when the dtype is bfloat16 (the default on a
GPU; `--dtype bfloat16` on a CPU), with fused AdamW on a GPU, eagerly
and (`--torch eager,compile`) with torch.compile. `JAXLM_MALLOC=tcmalloc` runs jaxlm's side under tcmalloc, as
`jaxlm train` reruns itself then (jaxlm/cpu_flags.py), and `--torch eager+tcmalloc` PyTorch's. Each side runs in
its own process, so peak memory
is its own: device memory on a GPU (jax peak_bytes_in_use / torch max_memory_allocated), peak RSS on
a CPU.

Printed per case: tokens/s after warm-up, MFU = tokens/s x (k N + 6 L d T) / peak (k = 6 full
fine-tuning, 4 LoRA; N all base parameters; 6 L d T the causal attention FLOPs), with peak = 989
TFLOP/s bf16 dense on H100/H200 and the measured matmul rate elsewhere, peak memory, compile time.
The last line gives jaxlm's speed over the best PyTorch per case. Not a test: the numbers depend on
the machine; they are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

# The shapes, as Hugging Face config.json fields (Llama's unless they name their model_type).
SHAPES = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0,
                         max_position_embeddings=8192, tie_word_embeddings=True),
    "llama-1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                     num_attention_heads=32, num_key_value_heads=4, rms_norm_eps=1e-5, rope_theta=10000.0,
                     max_position_embeddings=8192, tie_word_embeddings=False),
    "qwen3-0.6b": dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], vocab_size=151936, hidden_size=1024,
                       intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
                       tie_word_embeddings=True),
    "gemma3-1b": dict(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], vocab_size=262144,
                      hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
                      num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, rms_norm_eps=1e-6,
                      rope_theta=1000000.0, rope_local_base_freq=10000.0, sliding_window=512, sliding_window_pattern=6,
                      hidden_activation="gelu_pytorch_tanh", max_position_embeddings=32768, tie_word_embeddings=True,
                      attn_logit_softcapping=None, final_logit_softcapping=None),
    # Mixtures of experts, their full width with few layers (random init: the shapes of the matmuls, the routing
    # and the expert sort are the full models'; 48 and 32 layers would not fit one GPU's 80 GB with AdamW).
    "qwen3-30b-a3b-2l": dict(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], vocab_size=151936,
                             hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=2,
                             num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                             num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                             rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
                             tie_word_embeddings=False),
    "mixtral-8x7b-1l": dict(model_type="mixtral", architectures=["MixtralForCausalLM"], vocab_size=32000,
                            hidden_size=4096, intermediate_size=14336, num_hidden_layers=1, num_attention_heads=32,
                            num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, rms_norm_eps=1e-5,
                            rope_theta=1000000.0, max_position_embeddings=32768, sliding_window=None,
                            tie_word_embeddings=False),
    # A smoke-test shape: `--suite gpu --model tiny --batch 2 --seq 64` runs the whole suite on a CPU in ~5 minutes
    # (a mixture's case with tiny-moe, Qwen3-MoE's architecture at the same size).
    "tiny-moe": dict(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], vocab_size=512, hidden_size=64,
                     intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
                     rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=8192, tie_word_embeddings=False),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=8192,
                 tie_word_embeddings=True),
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
H100_BF16_DENSE = 989e12
# jaxlm settings on an accelerator (cuDNN flash attention, one scanned layer); `--set` adds more.
# The suite uses them on a CPU too (attention=auto is XLA there), so its smoke test runs the same code.
GPU_JAXLM = ["model.attention=auto", "model.scan_layers=true"]
# Both sides train rows of one document each (no packing): jaxlm passes per-row lengths to attention.
COMMON_JAXLM = ["data.pack=false"]
# (model, mode, batch, seq, torch variants, extra jaxlm settings): one H100/H200 in ~8 minutes.
GPU_SUITE = [
    ("smollm2-135m", "full", 16, 1024, "eager,compile", []),
    ("llama-1b", "full", 8, 1024, "eager,compile", []),
    ("smollm2-135m", "lora", 16, 1024, "eager", []),
    ("llama-1b", "full", 1, 8192, "eager", ["model.remat=full"]),  # long context: remat + flash attention
    # Mixtures of experts (`--cases 5,6` alone): jaxlm's grouped experts vs transformers' own experts
    ("qwen3-30b-a3b-2l", "full", 8, 1024, "eager", []),
    ("mixtral-8x7b-1l", "full", 8, 1024, "eager", []),
]


def is_mixture(model: str) -> bool:
    return SHAPES.get(model, {}).get("model_type") in ("qwen3_moe", "mixtral")


def hf_config(model: str, random_init: bool) -> dict:
    if model in SHAPES:
        return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **SHAPES[model]}
    from jaxlm.hf.load import read_hf_config

    return read_hf_config(model)


def weights_path(model: str, random_init: bool) -> str | None:
    """Where real weights come from, or None for a random initialisation."""
    if random_init or (model in SHAPES and model != "smollm2-135m"):
        return None
    if model == "smollm2-135m":
        from jaxlm import assets

        return assets.smollm2_gguf()
    return model


def flops_per_token(cfg: dict, n_params: float, seq: int, mode: str) -> float:
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // heads
    attention = 6 * cfg["num_hidden_layers"] * heads * head_dim * seq  # causal: half of 12 L d T
    experts = cfg.get("num_experts") or cfg.get("num_local_experts")
    if experts:  # a token runs k of each sparse layer's experts: the others' parameters do no work for it
        size = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
        sparse = cfg["num_hidden_layers"] - len(cfg.get("mlp_only_layers") or ())
        n_params -= sparse * (experts - cfg["num_experts_per_tok"]) * 3 * hidden * size
    return (6 if mode == "full" else 4) * n_params + attention


def batches(b: int, t: int, vocab: int, n: int = 3) -> list[dict]:
    out = []
    for seed in range(n):
        ids = np.random.RandomState(seed).randint(0, vocab, size=(b, t + 1)).astype(np.int32)
        out.append({"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": np.ones((b, t), np.int32),
                    "segment_ids": np.ones((b, t), np.int32),
                    "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()})
    return out


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# --- one side per process ------------------------------------------------------------------


def run_jaxlm(case: dict) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import jaxlm
    from jaxlm.models import architecture_for
    from jaxlm.train.config import load_config
    from jaxlm.train.engine import build_engine
    from jaxlm.train.inputs import prepare_model
    from jaxlm.train.state import count_params

    b, t = case["batch"], case["seq"]
    rank = 16 if case["mode"] == "lora" else 0
    cfg = load_config(None, ["task=causal_lm", f"train.batch_size={b}", f"train.seq_len={t}", "train.warmup_steps=0",
                             "train.learning_rate=1e-5", f"model.lora.rank={rank}", *case["settings"]])
    if case["weights"]:
        model, _ = jaxlm.load_pretrained(case["weights"])
    else:
        arch = architecture_for(case["hf_config"])
        model = arch.model_cls(arch.family.config.from_hf(case["hf_config"]), rngs=nnx.Rngs(0),
                               param_dtype=jnp.float32)
    n_params = count_params(nnx.state(model, nnx.Param))
    prepare_model(model, cfg, say=lambda line: print(line, file=sys.stderr))  # LoRA, attention, scan, remat
    engine = build_engine(model, cfg)
    del model  # the engine holds what trains; the original float32 copy would only inflate peak memory
    # as `jaxlm train` steps: train.steps_per_call optimizer steps a call (several on a CPU; see its comment)
    per_call = engine.steps_per_call
    data = batches(b, t, case["hf_config"]["vocab_size"], n=max(3, per_call + 1))

    def step(first: int):
        if per_call == 1:
            return engine.step(data[first % len(data)])
        return engine.steps([data[(first + i) % len(data)] for i in range(per_call)])

    began = time.perf_counter()
    engine.compile(data[0] if per_call == 1 else data[:per_call])
    compile_s = time.perf_counter() - began
    first_loss = float(jax.numpy.ravel(step(0)["loss"])[0])  # warm-up
    calls = max(1, -(-case["steps"] // per_call))
    began = time.perf_counter()
    for i in range(calls):
        metrics = step((i + 1) * per_call)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - began
    timed_steps = calls * per_call
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform == "gpu" else None
    memory = stats["peak_bytes_in_use"] / 2**30 if stats else peak_rss_gib()
    return {"tokens_per_s": timed_steps * b * t / seconds, "compile_s": compile_s, "memory_gib": memory,
            "n_params": n_params, "first_loss": first_loss, "steps_per_call": per_call,
            "last_loss": float(jax.numpy.ravel(metrics["loss"])[-1]), "device": device.device_kind}


def run_torch(case: dict, compiled: bool) -> dict:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if case["weights"] and not case["weights"].endswith(".gguf"):
        hf = transformers.AutoModelForCausalLM.from_pretrained(case["weights"], dtype=torch.float32,
                                                               attn_implementation="sdpa")
    elif case["weights"]:  # the same dequantised weights jaxlm reads, through an HF folder
        import tempfile

        import jaxlm

        with tempfile.TemporaryDirectory() as folder:
            model, _ = jaxlm.load_pretrained(case["weights"])
            jaxlm.export_pretrained(model, folder)
            del model
            hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                                   attn_implementation="sdpa")
    else:
        fields = {k: v for k, v in case["hf_config"].items() if k not in ("architectures", "model_type")}
        config = transformers.AutoConfig.for_model(case["hf_config"]["model_type"], **fields)
        torch.manual_seed(0)
        hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    n_params = sum(p.numel() for p in hf.parameters())
    hf = hf.to(device).train()
    if case["mode"] == "lora":
        from peft import LoraConfig, get_peft_model

        hf = get_peft_model(hf, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, lora_dropout=0.0))
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, **({"fused": True} if cuda else {}))
    forward = torch.compile(hf) if compiled else hf
    vocab = case["hf_config"]["vocab_size"]
    bf16 = case["dtype"] == "bfloat16"  # autocast on a CPU too: the bf16 baseline is torch's CPU autocast
    data = [{k: torch.tensor(v[k], dtype=torch.long, device=device) for k in ("input_ids", "targets")}
            for v in batches(case["batch"], case["seq"], vocab)]

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(input_ids=batch["input_ids"]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), batch["targets"].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    began = time.perf_counter()
    first_loss = float(step(data[0]))  # warm-up (and torch.compile's compilation)
    warmup_s = time.perf_counter() - began
    began = time.perf_counter()
    for i in range(case["steps"]):
        step(data[(i + 1) % len(data)])
    sync()
    seconds = time.perf_counter() - began
    memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else peak_rss_gib()
    step_s = seconds / case["steps"]
    return {"tokens_per_s": case["steps"] * case["batch"] * case["seq"] / seconds,
            "compile_s": max(warmup_s - step_s, 0.0) if compiled else 0.0, "memory_gib": memory,
            "n_params": n_params, "first_loss": first_loss, "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


# --- the parent: cases, peaks, the table -----------------------------------------------------


def matmul_peak_flops(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """Best observed GEMM rate of this device (jax), the denominator of MFU off H100/H200."""
    import jax
    import jax.numpy as jnp

    kind = jax.devices()[0].device_kind
    if jax.devices()[0].platform == "gpu" and ("H100" in kind or "H200" in kind):
        return H100_BF16_DENSE if dtype == "bfloat16" else H100_BF16_DENSE / 2  # tf32 dense: half of bf16
    n = 8192 if jax.devices()[0].platform == "gpu" else n
    a = jnp.ones((n, n), jnp.dtype(dtype))
    # bf16 x bf16 -> float32: the native product (a bf16 result would run at float32 speed on XLA:CPU)
    f = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
    f(a).block_until_ready()
    best = 0.0
    for _ in range(repeats):
        began = time.perf_counter()
        f(a).block_until_ready()
        best = max(best, 2 * n**3 / (time.perf_counter() - began))
    return best


def check_cudnn_attention(kernel: str = "cudnn") -> str:
    """cuDNN flash attention against XLA's attention on this GPU, bf16, outputs and gradients, for each
    way the model calls it (`kernel="xla"` runs the same comparison anywhere, as a smoke test)."""
    import jax
    import jax.numpy as jnp

    from jaxlm.models import layers

    rng = np.random.RandomState(0)
    b, t, heads, kv, d = 2, 256, 8, 2, 64
    q, k, v = (jnp.asarray(rng.randn(b, t, h, d), jnp.bfloat16) for h in (heads, kv, kv))
    lengths = jnp.asarray([256, 200], jnp.int32)
    real = jnp.asarray(np.arange(t)[None, :] < np.asarray(lengths)[:, None])[:, :, None, None]
    lines = []
    for name, mask in (("causal", layers.Mask()), ("causal + lengths", layers.Mask(lengths=lengths)),
                       ("bidirectional + lengths", layers.Mask(lengths=lengths, causal=False))):
        def loss(q, k, v, use_kernel, mask=mask):
            out = (layers.kernel_attention(q, k, v, mask, scale=d**-0.5, implementation=kernel) if use_kernel
                   else layers.attention(q, k, v, mask)[0])  # the XLA path (no cache: output, None)
            return jnp.sum(jnp.where(real, out.astype(jnp.float32), 0) ** 2)

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
        (loss_x, grads_x), (loss_k, grads_k) = step(q, k, v, False), step(q, k, v, True)
        error = abs(float(loss_k) - float(loss_x)) / max(abs(float(loss_x)), 1e-6)
        grad_error = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - c.astype(jnp.float32))))
                         for a, c in zip(grads_x, grads_k, strict=False))
        ok = error < 0.02 and grad_error < 0.5
        verdict = "ok" if ok else "MISMATCH"
        lines.append(f"{name}: loss rel. diff {error:.4f}, max gradient diff {grad_error:.3f} {verdict}")
    return f"attention check, {kernel} vs XLA (bf16): " + "; ".join(lines)


def run_side(side: str, case: dict, timeout: float, deadline: float) -> dict:
    """One side of one case in its own process; it gets `timeout` seconds, fewer if `deadline` is nearer."""
    timeout = min(timeout, deadline - time.monotonic())
    if timeout < 30:
        return {"error": "skipped: the time budget (--budget) is spent"}
    cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--case", json.dumps(case)]
    from jaxlm import cpu_flags

    environment = None
    if side == "jaxlm":  # JAXLM_MALLOC=tcmalloc here: jaxlm's side under tcmalloc, as `jaxlm train` would rerun
        environment = cpu_flags.tcmalloc_environment()
    elif side.endswith("+tcmalloc"):  # PyTorch under tcmalloc, as its CPU launcher (run_cpu) sets it up
        environment = cpu_flags.tcmalloc_environment({**os.environ, cpu_flags.ALLOCATOR: "tcmalloc"})
        if environment is None:
            return {"error": "skipped: no tcmalloc to preload here (or not Linux)"}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environment)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        tail = [x for x in out.stderr.strip().splitlines() if x.strip()][-6:]
        return {"error": "failed: " + " | ".join(tail)[-900:]}
    return json.loads(line[0][len("RESULT "):])


def describe(name: str, r: dict, flops_token: float, peak: float) -> str:
    if "error" in r:
        return f"{name} {r['error']}"
    compile_s = f", compile {r['compile_s']:.1f}s" if r.get("compile_s") else ""
    per_call = f", {r['steps_per_call']} steps a call" if r.get("steps_per_call", 1) > 1 else ""
    return (f"{name} {r['tokens_per_s']:,.0f} tok/s (MFU {r['tokens_per_s'] * flops_token / peak:.1%}, "
            f"peak {r['memory_gib']:.2f} GiB{compile_s}{per_call}, first loss {r['first_loss']:.2f})")


def run_case(model, mode, b, t, torch_variants, settings, args, peak, dtype) -> float | None:
    case = {"mode": mode, "batch": b, "seq": t, "steps": args.steps, "dtype": dtype,
            "hf_config": hf_config(model, args.random_init), "weights": weights_path(model, args.random_init),
            "settings": settings}
    label = f"[{os.path.basename(model)} {mode} {b}x{t} {dtype}{' random-init' if not case['weights'] else ''}]"
    sides = {"jaxlm": "jaxlm", **{f"torch {v}": f"torch-{v}" for v in torch_variants}}
    results = {}
    for _ in range(args.repeat):  # rounds alternate the sides, so load from other processes hits all alike
        for name, side in sides.items():
            r = run_side(side, case, args.timeout, args.deadline)
            best = results.get(name, {})
            if r.get("tokens_per_s", 0) > best.get("tokens_per_s", -1) or not best:
                results[name] = r
    n_params = next((r["n_params"] for r in results.values() if "n_params" in r), None)
    if n_params is None:
        print(label, *(f"{k}: {r.get('error')}" for k, r in results.items()), sep="\n  ", flush=True)
        return None
    flops_token = flops_per_token(case["hf_config"], n_params, t, mode)
    print(label, f"{n_params / 1e6:.1f}M params, {flops_token / 1e9:.2f} GFLOP/token, jaxlm settings: "
          f"{' '.join(settings) or '-'}", flush=True)
    for name, r in results.items():
        print("  " + describe(name, r, flops_token, peak), flush=True)
    torch_best = max((r["tokens_per_s"] for k, r in results.items() if k != "jaxlm" and "error" not in r), default=None)
    if "error" in results["jaxlm"] or not torch_best:
        return None
    ratio = results["jaxlm"]["tokens_per_s"] / torch_best
    memory = results["jaxlm"]["memory_gib"] / min(r["memory_gib"] for k, r in results.items()
                                                     if k != "jaxlm" and "error" not in r)
    print(f"  ratio jaxlm / best torch: speed {ratio:.2f}, memory {memory:.2f}", flush=True)
    return ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="smollm2-135m (default) | llama-1b | qwen3-0.6b | gemma3-1b | tiny | PATH "
                                        "(HF folder or .gguf); with --suite: every case uses this model instead of "
                                        "its own")
    parser.add_argument("--random-init", action="store_true", help="random weights of the model's shape (no files)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every side; the best round counts")
    parser.add_argument("--batch", type=int, help="rows per step (default 4; with --suite: each case's own)")
    parser.add_argument("--seq", type=int, help="tokens per row (default 256; with --suite: each case's own)")
    parser.add_argument("--modes", default="full,lora", help="full and/or lora (r16, alpha 32, every projection)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="compute dtype; auto: bfloat16 on a GPU/TPU, float32 on a CPU")
    parser.add_argument("--torch", default="eager",
                        help="PyTorch variants: eager, compile, eager+tcmalloc (eager with tcmalloc preloaded)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a jaxlm config override for the jaxlm side, e.g. --set model.remat=full")
    parser.add_argument("--suite", choices=["gpu"], help="gpu: every case of the accelerator comparison")
    parser.add_argument("--cases", help="with --suite: only these cases, 1-based, e.g. 2,4")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for everything; sides that would start later are skipped "
                             "(default: none; 500 in --suite gpu, so it fits one 10-minute device call)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per side before it counts as failed (default 600; 240 in --suite gpu)")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: one side of one case per process
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        case = json.loads(args.case)
        result = run_jaxlm(case) if args.side == "jaxlm" else run_torch(case, args.side == "torch-compile")
        print("RESULT " + json.dumps(result), flush=True)
        return

    import jax

    device = jax.devices()[0]
    accelerator = device.platform != "cpu"
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if accelerator else "float32")
    settings = COMMON_JAXLM + [f"train.compute_dtype={dtype}"] + (GPU_JAXLM if accelerator or args.suite else [])
    settings += args.set
    peak = matmul_peak_flops(dtype)
    print(f"device: {device.device_kind} ({device.platform}); peak for MFU {peak / 1e12:.3f} TFLOP/s "
          f"({'nominal' if peak in (H100_BF16_DENSE, H100_BF16_DENSE / 2) else 'measured'} {dtype} matmul); "
          f"{args.steps} timed steps after 1 warm-up, best of {args.repeat} round(s)", flush=True)
    ratios = []
    args.timeout = args.timeout or (240 if args.suite else 600)
    args.budget = args.budget or (500 if args.suite else float("inf"))
    args.deadline = time.monotonic() + args.budget
    if args.suite == "gpu":
        args.random_init, args.steps = True, max(args.steps, 10)
        try:
            print(check_cudnn_attention("cudnn" if accelerator else "xla"), flush=True)
        except Exception as e:  # report and go on: the cases say whether training runs at all
            print(f"cuDNN attention check failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        began = time.perf_counter()
        chosen = [int(i) for i in args.cases.split(",")] if args.cases else range(1, len(GPU_SUITE) + 1)
        for model, mode, b, t, variants, extra in (GPU_SUITE[i - 1] for i in chosen):
            tiny_mixture = args.model == "tiny" and is_mixture(model)
            model, b, t = "tiny-moe" if tiny_mixture else args.model or model, args.batch or b, args.seq or t
            ratio = run_case(model, mode, b, t, variants.split(","), settings + extra, args, peak, dtype)
            ratios.append((f"{model} {mode} {b}x{t}", ratio))
        print(f"suite took {time.perf_counter() - began:.0f}s")
    else:
        args.model, args.batch, args.seq = args.model or "smollm2-135m", args.batch or 4, args.seq or 256
        for mode in args.modes.split(","):
            ratio = run_case(args.model, mode, args.batch, args.seq, args.torch.split(","), settings, args, peak, dtype)
            ratios.append((f"{os.path.basename(args.model)} {mode} {args.batch}x{args.seq}", ratio))
    print("RATIO jaxlm/torch: " + "; ".join(f"{name} {'n/a' if r is None else f'{r:.2f}'}" for name, r in ratios))


if __name__ == "__main__":
    main()
