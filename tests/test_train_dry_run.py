"""`python -m jaxlm.train --dry-run`: XLA's figures for the compiled step, and nothing else happens."""

from __future__ import annotations

import re

import pytest

from hf_checkpoints import tiny_llama
from jaxlm.train.__main__ import main


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    reference = tiny_llama(folder)  # weights are never read by a dry run; the folder has no tokenizer either
    return str(folder), sum(p.numel() for p in reference.parameters())


def dry_run(llama_dir, out_dir, *overrides, capsys):
    code = main(["--dry-run", f"model.path={llama_dir[0]}", "task=causal_lm", "train.batch_size=4",
                 "train.seq_len=64", f"output_dir={out_dir}", *overrides])
    text = capsys.readouterr().out
    return code, text


def figure(text: str, name: str) -> float:
    value, unit = re.search(rf"{name} ([\d.]+) (B|KiB|MiB|GiB)", text).groups()
    return float(value) * {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]


def test_dry_run_reports_memory_and_flops_and_writes_nothing(llama_dir, tmp_path, capsys):
    code, text = dry_run(llama_dir, tmp_path / "run", "model.lora.rank=0", capsys=capsys)
    assert code == 0
    assert not (tmp_path / "run").exists(), "a dry run must not create the output directory"
    n = llama_dir[1]  # as many parameters as transformers' model, all trained
    assert f"{n:,} parameters ({n:,} trained)" in text
    assert figure(text, "arguments") >= 3 * n * 4  # float32 params + 2 Adam moments, donated in place
    assert figure(text, "temporaries") > 0
    flops = float(re.search(r"FLOPs per step: ([\d.]+) MFLOP", text).group(1)) * 1e6
    assert flops >= 6 * n * 4 * 64  # at least 6 N per token


def test_dry_run_names_a_missing_model_and_exits_2(tmp_path, capsys):
    code = main(["--dry-run", f"model.path={tmp_path / 'missing'}", f"output_dir={tmp_path / 'run'}"])
    assert code == 2
    assert "missing" in capsys.readouterr().err


def test_the_cpu_train_step_compiles_with_the_memory_optimised_schedule(llama_dir, tmp_path, capsys, monkeypatch):
    # jaxlm sets it itself (jaxlm/cpu_flags.py): the same step holds fewer temporaries than under XLA's default
    # schedule, which a user gets by naming a scheduler in XLA_FLAGS (jaxlm then leaves the choice to XLA)
    temporaries = {}
    for flags in ("", "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT"):
        monkeypatch.setenv("XLA_FLAGS", flags)
        code, text = dry_run(llama_dir, tmp_path / "run", "model.lora.rank=0", capsys=capsys)
        assert code == 0
        temporaries[flags] = figure(text, "temporaries")
    assert temporaries[""] < 0.9 * temporaries["--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT"]


# Unrolled layers save less than scanned ones, but they save: the train step compiles with XLA:CPU's memory-
# optimised schedule (jaxlm/cpu_flags.py); with the default one, remat=full saved nothing (8x512: 0.95 of none's
# temporaries). 8x512, where activations outweigh the rest (at 4x64 remat's own buffers cost more than it saves).
@pytest.mark.parametrize("scan_layers, at_most", [("true", 0.75), ("false", 0.92)])
def test_remat_shows_as_less_temporary_memory_and_more_flops(llama_dir, tmp_path, capsys, scan_layers, at_most):
    figures = {}
    for remat in ("none", "full"):
        code, text = dry_run(llama_dir, tmp_path / "run", "model.lora.rank=0", f"model.scan_layers={scan_layers}",
                             f"model.remat={remat}", "train.batch_size=8", "train.seq_len=512", capsys=capsys)
        assert code == 0 and ("unrolled twin" in text) == (scan_layers == "true")
        value, unit = re.search(r"FLOPs per step: ([\d.]+) ([MG])FLOP", text).groups()
        flops = float(value) * {"M": 1e6, "G": 1e9}[unit]
        figures[remat] = figure(text, "temporaries"), flops
    assert figures["full"][0] < at_most * figures["none"][0]  # activations are recomputed, not stored
    assert figures["full"][1] > figures["none"][1]  # ... which costs a second forward pass
