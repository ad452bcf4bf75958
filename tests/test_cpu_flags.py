"""The XLA:CPU choices jaxlm makes itself (jaxlm/cpu_flags.py); their effect on the compiled step is checked in
tests/test_train_dry_run.py and tests/test_train_engine.py."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from jaxlm import cpu_flags
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


# --- JAXLM_MALLOC=tcmalloc: `jaxlm train` under tcmalloc ----------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TCMALLOC = cpu_flags.tcmalloc_library()
needs_tcmalloc = pytest.mark.skipif(TCMALLOC is None or sys.platform != "linux",
                                    reason="needs tcmalloc (make setup installs libtcmalloc-minimal4)")


@pytest.mark.parametrize("environ, platform, chosen", [
    ({cpu_flags.ALLOCATOR: "tcmalloc"}, "linux", True),
    ({}, "linux", False),  # the default: the C library's malloc
    ({cpu_flags.ALLOCATOR: "system"}, "linux", False),
    ({cpu_flags.ALLOCATOR: "tcmalloc", "LD_PRELOAD": "libtcmalloc_minimal.so.4"}, "linux", False),  # the rerun
    ({cpu_flags.ALLOCATOR: "tcmalloc"}, "darwin", False),
], ids=["asked", "default", "system", "rerun_never_loops", "macos"])
def test_train_reruns_under_tcmalloc_only_when_asked_and_once(environ, platform, chosen, monkeypatch):
    monkeypatch.setattr(cpu_flags.ctypes.util, "find_library", lambda name: f"lib{name}.so.4")
    got = cpu_flags.tcmalloc_environment({"PATH": "/bin", "LD_PRELOAD": "", **environ}, platform)
    assert (got is not None) == chosen
    if chosen:
        assert got["LD_PRELOAD"] == "libtcmalloc_minimal.so.4" and got["PATH"] == "/bin"


def test_asking_for_tcmalloc_where_none_is_installed_keeps_the_c_librarys_malloc(monkeypatch):
    monkeypatch.setattr(cpu_flags.ctypes.util, "find_library", lambda name: None)
    assert cpu_flags.tcmalloc_environment({cpu_flags.ALLOCATOR: "tcmalloc"}, "linux") is None
    note = cpu_flags.allocator_note({cpu_flags.ALLOCATOR: "tcmalloc"})
    assert "no tcmalloc could be loaded" in note and "libtcmalloc-minimal4" in note
    assert cpu_flags.allocator_note({}) is None


def test_only_train_typed_at_a_shell_reruns_itself(monkeypatch):
    """`jaxlm train` from the command line may rerun itself; a caller passing argv (tests, scripts) never has its
    process replaced, and the other commands keep their allocator."""
    from jaxlm import cli

    calls = []
    monkeypatch.setattr(cpu_flags, "relaunch_with_tcmalloc", lambda: calls.append(sys.argv[1]))
    monkeypatch.setattr(cli, "load", lambda target: lambda argv, prog: 0)
    for argv in (["jaxlm", "train", "x=1"], ["jaxlm", "convert", "a", "b"]):
        monkeypatch.setattr(sys, "argv", argv)
        assert cli.main() == 0
    assert cli.main(["train", "x=1"]) == 0
    assert calls == ["train"]


RERUN = """
import os
from jaxlm import cpu_flags
print("run", "tcmalloc" in os.environ.get("LD_PRELOAD", ""), flush=True)
cpu_flags.relaunch_with_tcmalloc()
print("tcmalloc mapped:", "tcmalloc" in open("/proc/self/maps").read())
print(cpu_flags.allocator_note())
"""


@needs_tcmalloc
def test_the_process_reruns_itself_once_with_tcmalloc_loaded():
    environ = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", RERUN], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**environ, cpu_flags.ALLOCATOR: "tcmalloc"}).stdout.splitlines()
    assert out[:3] == ["run False", "run True", "tcmalloc mapped: True"]  # the first run, then its rerun only
    assert out[3].startswith("host allocator: tcmalloc")


@needs_tcmalloc
def test_python_dash_m_jaxlm_train_runs_under_tcmalloc_and_says_so(tmp_path):
    """What users run: the module entry point reruns itself, and the run's log names the allocator."""
    from hf_checkpoints import tiny_llama

    tiny_llama(tmp_path / "llama")
    environ = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    result = subprocess.run([sys.executable, "-m", "jaxlm.train", "--dry-run", f"model.path={tmp_path / 'llama'}",
                             "task=causal_lm", "train.batch_size=2", "train.seq_len=16",
                             f"output_dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=ROOT,
                            env={**environ, cpu_flags.ALLOCATOR: "tcmalloc", "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "host allocator: tcmalloc" in result.stdout
