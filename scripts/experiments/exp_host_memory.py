"""Where a CPU training process's memory goes, stage by stage, and what each step costs the kernel (issue 31).

    PYTHONPATH=. python scripts/experiments/exp_host_memory.py [--mode full|lora] [--steps 4] [--keep-heap]

Loads SmolLM2-135M (the shipped GGUF), builds and compiles jaxlm's train step at 4x256 float32 as
scripts/bench_train.py does, then runs steps one at a time. A thread samples the resident set every 2 ms, so
each stage's peak RSS is seen (load, engine, compile, first step, steps), next to the bytes jax holds live
(params and optimizer state). Per step: minor page faults, kernel and user CPU seconds, wall seconds, RSS.

`--keep-heap` skips what `Engine.compile` does on a CPU (`cpu_flags.return_freed_memory`), to see what it
saves. Run it under `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736` to see what a
heap that keeps XLA:CPU's temporaries between steps would change (measured: no page faults after the second
step, and twice the temporaries resident; see cpu_speed.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bench_train  # noqa: E402


def rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


class Peaks:
    """The highest RSS seen while each named stage ran."""

    def __init__(self):
        self.stage, self.peaks = "import", {}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0.0), rss_gib())
            time.sleep(0.002)

    def enter(self, stage: str) -> None:
        time.sleep(0.01)
        self.stage = stage


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["full", "lora"], default="full")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--keep-heap", action="store_true", help="do not return the freed heap after compiling")
    args = parser.parse_args()
    peaks = Peaks()

    import jax

    import jaxlm
    from jaxlm import cpu_flags
    from jaxlm.train.config import load_config
    from jaxlm.train.engine import build_engine
    from jaxlm.train.inputs import prepare_model

    if args.keep_heap:
        cpu_flags.return_freed_memory = lambda: False
    rank = 16 if args.mode == "lora" else 0
    cfg = load_config(None, ["task=causal_lm", "train.batch_size=4", "train.seq_len=256", "train.warmup_steps=0",
                             "train.learning_rate=1e-5", f"model.lora.rank={rank}", "train.compute_dtype=float32",
                             *bench_train.COMMON_JAXLM])

    def live_gib() -> float:
        return sum(a.nbytes for a in jax.live_arrays()) / 2**30

    peaks.enter("load")
    model, _ = jaxlm.load_pretrained(bench_train.weights_path("smollm2-135m", False))
    print(f"loaded: RSS {rss_gib():.2f} GiB, jax arrays {live_gib():.2f} GiB")
    peaks.enter("engine")
    prepare_model(model, cfg, say=lambda line: None)
    engine = build_engine(model, cfg)
    del model
    print(f"engine built: RSS {rss_gib():.2f} GiB, jax arrays {live_gib():.2f} GiB")
    data = bench_train.batches(4, 256, 49152)
    peaks.enter("compile")
    engine.compile(data[0])
    print(f"compiled: RSS {rss_gib():.2f} GiB")
    for i in range(args.steps):
        peaks.enter(f"step {i + 1}")
        before, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        jax.block_until_ready(engine.step(data[i % len(data)]))
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(f"step {i + 1}: {time.perf_counter() - began:.2f} s wall, {after.ru_utime - before.ru_utime:.2f} s user, "
              f"{after.ru_stime - before.ru_stime:.2f} s kernel, {after.ru_minflt - before.ru_minflt} page faults, "
              f"RSS {rss_gib():.2f} GiB")
    peaks.enter("end")
    print("peak RSS by stage: " + ", ".join(f"{k} {v:.2f}" for k, v in peaks.peaks.items() if k != "end") + " GiB")
    print(f"PEAK RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
