"""Rounds of two (or more) ways of running the same work in one process, alternating their order so the
machine's drift hits both alike: what the in-process A/Bs of cpu_speed.md time with, and the engine they time
(`smollm2_engine`)."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bench_train  # noqa: E402


def smollm2_engine(rank: int):
    """(engine, batches): jaxlm's train engine for SmolLM2-135M 4x256 float32 (the shipped GGUF), LoRA of `rank`
    (0: full fine-tuning), as `jaxlm train` builds it on a CPU; its `train.steps_per_call` steps a call
    compiled and run once, on that many random batches."""
    import jax

    import jaxlm
    from jaxlm.train.config import load_config
    from jaxlm.train.engine import build_engine
    from jaxlm.train.inputs import prepare_model

    cfg = load_config(None, ["task=causal_lm", "train.batch_size=4", "train.seq_len=256", "train.warmup_steps=0",
                             "train.learning_rate=1e-5", f"model.lora.rank={rank}", "data.pack=false"])
    model, _ = jaxlm.load_pretrained(bench_train.weights_path("smollm2-135m", False))
    prepare_model(model, cfg, say=lambda line: None)
    engine = build_engine(model, cfg)
    if engine.steps_per_call == 1:
        sys.exit("train.steps_per_call resolves to 1 here (not a CPU?): these A/Bs time several steps a call")
    data = bench_train.batches(4, 256, 49152, n=engine.steps_per_call)
    engine.compile(data)
    jax.block_until_ready(engine.steps(data))  # warm-up
    return engine, data


def alternate(runs: dict[str, Callable[[], object]], rounds: int, steps: int) -> dict[str, list[tuple]]:
    """{side: [(wall, user CPU, system CPU) seconds per step, one per round]}; each run does `steps` steps and
    blocks until they are done."""
    times: dict[str, list[tuple]] = {side: [] for side in runs}
    for r in range(rounds):
        for side in list(runs)[:: 1 if r % 2 == 0 else -1]:
            before, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            runs[side]()
            wall, after = time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF)
            times[side].append((wall / steps, (after.ru_utime - before.ru_utime) / steps,
                                (after.ru_stime - before.ru_stime) / steps))
    return times


def report(times: dict[str, list[tuple]], tokens_per_step: int, label: str = "") -> list[float]:
    """Prints each side's median wall, user and system CPU seconds per step; returns the median walls."""
    medians = []
    for side, rows in times.items():
        wall, user, system = (statistics.median(column) for column in zip(*rows, strict=True))
        medians.append(wall)
        print(f"{label}{side}: median {wall:.2f} s/step ({tokens_per_step / wall:.0f} tok/s; rounds "
              f"{', '.join(f'{row[0]:.2f}' for row in rows)}), user CPU {user:.2f}, kernel {system:.2f} s/step")
    return medians
