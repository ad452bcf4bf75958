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

`JAXLM_MALLOC=tcmalloc jaxlm train ...` reruns the command under tcmalloc (`relaunch_with_tcmalloc`): faster
on a CPU, at the cost of host memory, hence not the default. glibc maps those ~2 GiB of temporaries fresh at
every step and unmaps them after it (XLA's worker threads allocate them, from arenas that map any block past
32 MiB), so every page of them faults and is zeroed again inside the matmuls that first write it: ~535,000
page faults and 1.1-3.7 s of kernel time a step. tcmalloc keeps the freed block for the next step: no page
faults. SmolLM2-135M 4x256 full fine-tuning on a 2-core Intel Xeon VM (scripts/bench_train.py's jaxlm side,
alternating): 147-153 tok/s and peak RSS 6.4-6.6 GiB under tcmalloc, 107-126 tok/s and 4.37 GiB under
glibc. glibc's own knobs cannot keep the block from inside the process (its tunables are read at startup; the
same knobs set in the environment kept it, but the second step's block did not always fit where the first's
was, and RSS reached 6.4 GiB too), and jemalloc kept faulting. PyTorch's CPU launcher (`python -m
torch.backends.xeon.run_cpu`) preloads tcmalloc or jemalloc the same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re
import sys

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
    tcmalloc = _tcmalloc()
    if tcmalloc is not None:  # the allocator `jaxlm train` reruns itself under: it keeps what loading freed too
        tcmalloc.MallocExtension_ReleaseFreeMemory()
    libc = _libc()
    if libc is None:
        return tcmalloc is not None
    libc.malloc_trim(0)
    return True


def _tcmalloc():
    """This process's tcmalloc (preloaded), or None."""
    try:
        process = ctypes.CDLL(None)
    except OSError:
        return None
    return process if hasattr(process, "MallocExtension_ReleaseFreeMemory") else None


ALLOCATOR = "JAXLM_MALLOC"  # "tcmalloc": `jaxlm train` reruns itself under tcmalloc; unset: the C library's malloc


def tcmalloc_environment(environ=os.environ, platform: str = sys.platform) -> dict[str, str] | None:
    """The environment to rerun this command in with tcmalloc preloaded, or None: JAXLM_MALLOC is not
    "tcmalloc", tcmalloc is loaded already (LD_PRELOAD names it: the rerun itself, or the user's own), this is
    not Linux, or no tcmalloc is installed (Debian: libtcmalloc-minimal4, which `make setup` installs)."""
    if environ.get(ALLOCATOR) != "tcmalloc" or "tcmalloc" in environ.get("LD_PRELOAD", "") or platform != "linux":
        return None
    library = tcmalloc_library()
    if library is None:
        return None
    return {**environ, "LD_PRELOAD": " ".join(filter(None, [library, environ.get("LD_PRELOAD", "")]))}


def tcmalloc_library() -> str | None:
    """The installed tcmalloc's library name (the minimal build first), or None."""
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def relaunch_with_tcmalloc() -> None:
    """With JAXLM_MALLOC=tcmalloc, run this process's own command line again under tcmalloc (see the module's
    docstring) before it starts any work; returns where `tcmalloc_environment` says no, or the exec fails.
    Call it first thing in a command's entry point, never from a library function: it replaces the process."""
    environment = tcmalloc_environment()
    if environment is None:
        return
    try:
        os.execve(sys.executable, sys.orig_argv, environment)
    except OSError:
        return  # the run goes on under the C library's malloc; allocator_note says so


def allocator_note(environ=os.environ) -> str | None:
    """A line for the run's log when JAXLM_MALLOC asks for tcmalloc: whether this process runs under it."""
    if environ.get(ALLOCATOR) != "tcmalloc":
        return None
    if _tcmalloc() is not None:
        return "host allocator: tcmalloc (JAXLM_MALLOC=tcmalloc: faster CPU steps, more host memory)"
    return ("JAXLM_MALLOC=tcmalloc: no tcmalloc could be loaded (Linux, Debian package libtcmalloc-minimal4): "
            "running under the C library's malloc")
