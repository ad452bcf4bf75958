"""The XLA:CPU choices jaxlm makes itself (jaxlm/cpu_flags.py); their effect on the compiled step is checked in
tests/test_train_dry_run.py and tests/test_train_engine.py."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from jaxlm.cpu_flags import MEMORY_OPTIMIZED, SCHEDULER, bf16_note, train_step_options


def _glibc() -> bool:
    return platform.libc_ver()[0] == "glibc"


ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_the_train_step_gets_the_memory_optimised_schedule_on_a_cpu_unless_xla_flags_name_one(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    assert train_step_options("cpu") == {SCHEDULER: MEMORY_OPTIMIZED}
    assert train_step_options("gpu") is None
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT")
    assert train_step_options("cpu") is None


def test_bf16_compute_warns_only_on_a_cpu_without_bf16_instructions(tmp_path):
    for name, text in (("zen4", ZEN4), ("skylake", SKYLAKE), ("graviton3", GRAVITON3)):
        (tmp_path / name).write_text(text)
    note = bf16_note("bfloat16", "cpu", str(tmp_path / "skylake"))
    assert note and "float32 is likely faster" in note and "avx512_bf16" in note
    assert bf16_note("bfloat16", "cpu", str(tmp_path / "zen4")) is None
    assert bf16_note("bfloat16", "cpu", str(tmp_path / "graviton3")) is None
    assert bf16_note("float32", "cpu", str(tmp_path / "skylake")) is None
    assert bf16_note("bfloat16", "gpu", str(tmp_path / "skylake")) is None
    assert bf16_note("bfloat16", "cpu", str(tmp_path / "missing")) is None  # not Linux: unknown, so silent


HEAP_WITH_HOLES = """
import ctypes, ctypes.util, os
from jaxlm.cpu_flags import return_freed_memory

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(64 * 1024) for _ in range(4000)]  # 250 MiB on the heap (under glibc's mmap threshold)
for b in blocks:
    ctypes.memset(b, 1, 64 * 1024)
for i, b in enumerate(blocks):
    if i % 8:  # every 8th block stays, so the freed ones are holes the heap cannot shrink past
        libc.free(b)
before = rss_mib()
print(return_freed_memory(), before, rss_mib())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or not _glibc(), reason="glibc's malloc_trim (Linux)")
def test_returning_freed_memory_gives_the_heaps_holes_back_to_the_os():
    """Holes left in the C heap (as loading and compiling leave them) stay in the process until trimmed."""
    out = subprocess.run([sys.executable, "-c", HEAP_WITH_HOLES], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    returned, before, after = out.stdout.split()
    assert returned == "True"
    assert float(before) - float(after) > 150  # of the ~219 MiB freed
