"""XLA:CPU options jaxlm gives its own compilations, so that a user never has to export flags.

`model.remat` on the CPU: XLA:CPU's default schedule runs independent ops concurrently and keeps their
buffers alive together, which undid rematerialisation with unrolled layers (a tiny 2-layer Llama 8x512,
`--dry-run`: temporaries 251.8 -> 253.4 MiB with remat=full, +29 % FLOPs). The memory-optimised schedule
makes it save (-> 149 MiB). It is given to the train step's compilation only when remat is on: without
remat it also cuts SmolLM2-135M 4x256's temporaries by 17-26 %, but its step ran 12 % (full) and 32 % (LoRA)
slower in wall time on a loaded 2-core CPU (the same CPU seconds: it gives up running ops concurrently), so a
run that did not ask for memory keeps the default.
A user's own XLA_FLAGS choice wins. Measured: scripts/experiments/cpu_speed.md (scripts/bench_xla_flags.py).
"""

from __future__ import annotations

import os

SCHEDULER = "xla_cpu_scheduler_type"
MEMORY_OPTIMIZED = "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"


def train_step_options(remat: str, platform: str) -> dict[str, str] | None:
    """XLA debug options for the train step's compilation (jax.jit's `compiler_options`), or None."""
    if remat == "none" or platform != "cpu" or f"--{SCHEDULER}=" in os.environ.get("XLA_FLAGS", ""):
        return None
    return {SCHEDULER: MEMORY_OPTIMIZED}
