"""XLA:CPU options jaxlm gives its own compilations, so that a user never has to export flags.

The train step on the CPU compiles with XLA's memory-optimised schedule. XLA:CPU's default schedule runs
independent ops concurrently and keeps their buffers alive together: SmolLM2-135M 4x256's full fine-tuning
step held 3146 MiB of temporaries with it and 2059 MiB with the memory-optimised one, and on a quiet 2-core
CPU it also ran faster (0.83x and 0.89x the step time in two runs; LoRA r16: 1.00-1.03x, temporaries
2948 -> 2117 MiB; scripts/bench_xla_flags.py, steps interleaved in one process; losses bit-identical).
It also makes `model.remat` save memory with unrolled layers (a tiny 2-layer Llama 8x512: 251.8 MiB with
remat=full under the default schedule, 149 MiB with this one). On a 2-core machine that other processes keep
busy the default schedule's concurrency won wall time back (this step ran 0-12 % slower, LoRA up to 32 %), so a
user who prefers it names it: a user's own XLA_FLAGS choice of scheduler wins.
Measured: scripts/experiments/cpu_speed.md.

After compiling the train step, jaxlm hands the C heap's free pages back to the OS (`return_freed_memory`).
On a CPU the step's temporaries are one large block that glibc maps fresh at every step, so the pages that
loading and compiling freed inside the heap are never reused by it: they only add to the process's peak
(SmolLM2-135M 4x256: peak RSS 4.79 -> 4.32 GiB full fine-tuning, 4.06 -> 3.81 GiB LoRA; steps no slower).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re

SCHEDULER = "xla_cpu_scheduler_type"
MEMORY_OPTIMIZED = "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"


def train_step_options(platform: str) -> dict[str, str] | None:
    """XLA debug options for the train step's compilation (jax.jit's `compiler_options`), or None."""
    if platform != "cpu" or f"--{SCHEDULER}=" in os.environ.get("XLA_FLAGS", ""):
        return None
    return {SCHEDULER: MEMORY_OPTIMIZED}


# /proc/cpuinfo flags of a CPU that multiplies bf16 natively (x86 AVX512-BF16 or AMX; Arm's BF16 extension)
NATIVE_BF16 = {"avx512_bf16", "amx_bf16", "bf16"}


def bf16_note(compute_dtype: str, platform: str, cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """A line for the log when train.compute_dtype=bfloat16 is likely slower than float32 on this CPU, else None.

    XLA:CPU multiplies bf16 x bf16 -> float32 natively where the CPU has bf16 instructions (the CI machine,
    AVX512-BF16: full fine-tuning 0.66x and LoRA 0.62x float32's step time); without them it converts to
    float32 first, adding work to the same float32 arithmetic. Not measured on such a CPU (none was at hand),
    hence "likely". None where /proc/cpuinfo cannot be read (not Linux): jaxlm does not know."""
    if compute_dtype != "bfloat16" or platform != "cpu":
        return None
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    flags = set(" ".join(re.findall(r"^(?:flags|Features)\s*:(.*)$", text, re.MULTILINE)).split())
    if not flags or flags & NATIVE_BF16:
        return None
    return ("train.compute_dtype=bfloat16: this CPU has no bf16 matmul instructions (none of "
            f"{', '.join(sorted(NATIVE_BF16))} in {cpuinfo}), so XLA converts bf16 to float32 before every matmul: "
            "float32 is likely faster here")


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None  # glibc only (not musl, macOS)


def return_freed_memory() -> bool:
    """Give the C heap's free pages back to the OS (glibc's malloc_trim); False where there is no glibc.

    Freed memory otherwise stays in the process: Python objects and numpy arrays from loading a checkpoint,
    XLA's compiler, leave holes in the heap that a later large block (XLA:CPU's temporaries, mapped on their
    own) cannot use."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
