"""The XLA:CPU choices jaxlm makes itself (jaxlm/cpu_flags.py); their effect on the compiled step is checked in
tests/test_train_dry_run.py and tests/test_train_engine.py."""

from __future__ import annotations

from jaxlm.cpu_flags import MEMORY_OPTIMIZED, SCHEDULER, bf16_note, train_step_options

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
