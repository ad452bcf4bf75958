"""Exact resume: a run killed with SIGKILL mid-run and started again ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxlm.train import load_config, train
from jaxlm.train.checkpointing import Checkpointer
from jaxlm.train.metrics import read_metrics
from train_helpers import write_text, write_tiny_llama

STEPS = 12


def overrides(model_dir, text_dir, out_dir, mixing=()):
    # Dropout-free Llama, causal LM with packing, shuffling and mixing of two sources: every
    # piece of state (params, Adam moments, step, data position, a bandit's weights) must come back exactly.
    overrides = [*mixing,
        f"model.path={model_dir}", "task=causal_lm", f"output_dir={out_dir}", f"train.steps={STEPS}",
        "train.batch_size=4", "train.seq_len=32", "train.learning_rate=0.005", "train.warmup_steps=3",
        "train.log_every=1", "eval.every=0", "eval.sample_prompts=0", "checkpoint.every=2", "checkpoint.keep=2",
        "model.lora.rank=4", "data.shuffle_buffer=16",
        f"data.train=[{{path: {text_dir}, weight: 1}}, {{path: {text_dir}/doc03.txt, weight: 0.5}}]", "data.eval=[]",
    ]
    return overrides


def command(*args):
    return [sys.executable, "-m", "jaxlm.train", "--no-progress", *overrides(*args)]


def final_adapters(out_dir):
    from safetensors.numpy import load_file

    return load_file(os.path.join(out_dir, "adapter", "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return write_tiny_llama(root / "llama"), write_text(root / "text"), root


def test_sigkill_mid_run_then_rerun_reaches_the_same_parameters_bitwise(assets):
    """With the default (static) mixing. A bandit run's resume replays its weights: test_data_pipeline.py checks
    that on the pipeline alone (a second SIGKILL run, with bandit mixing, cost CI a minute)."""
    model_dir, text_dir, root = assets
    mixing = ()
    root = root / "static"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    train(load_config(None, overrides(model_dir, text_dir, root / "straight", mixing)), progress=False)

    out = root / "killed"
    proc = subprocess.Popen(command(model_dir, text_dir, out, mixing), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill at an arbitrary step after the first checkpoints, mid-save or not
        steps = [r["step"] for r in read_metrics(str(out / "metrics.jsonl"))]
        if steps and max(steps) >= STEPS // 2 + 1:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(r["step"] for r in read_metrics(str(out / "metrics.jsonl")))
    assert killed_at < STEPS, "the run finished before it could be killed"
    ckpt = Checkpointer(str(out / "checkpoints"), keep=2)
    resumed_from = ckpt.latest_step()
    ckpt.close()
    assert resumed_from is not None and 0 < resumed_from <= killed_at

    resumed = subprocess.run(command(model_dir, text_dir, out, mixing), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {out / 'checkpoints'} at step {resumed_from}" in resumed.stdout

    expected, got = final_adapters(root / "straight"), final_adapters(out)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    # The metrics of the resumed run continue the log without gaps or duplicates, with the same losses
    # (and, mixing by bandit, the same per-source losses and weights).
    def learned(row):
        return {k: v for k, v in row.items() if k == "loss" or k.startswith(("weight/", "train_loss/"))}

    straight = {r["step"]: learned(r) for r in read_metrics(str(root / "straight" / "metrics.jsonl"))}
    rows = read_metrics(str(out / "metrics.jsonl"))
    assert [r["step"] for r in rows] == sorted(straight)
    assert {r["step"]: learned(r) for r in rows} == straight
    if mixing:
        weights = [r[f"weight/{text_dir}"] for r in rows if f"weight/{text_dir}" in r]
        assert len(weights) == STEPS and max(weights) - min(weights) > 0.05  # the weights did move
