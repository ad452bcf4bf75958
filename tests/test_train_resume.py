"""Exact resume: a run killed with SIGKILL mid-run and started again ends where an uninterrupted run ends:
causal LM with LoRA, and DPO with full fine-tuning and a precomputed reference (rebuilt before the restore)."""

from __future__ import annotations

import json
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


def overrides(model_dir, data, out_dir, task):
    # Dropout-free Llama with shuffling: every piece of state (params, Adam moments, step, data position) must
    # come back exactly. causal_lm: LoRA, packing and two mixed sources. dpo: full fine-tuning, the reference's
    # log-probs precomputed once per run and found again by each pair after the restore.
    per_task = {
        "causal_lm": ["model.lora.rank=4",
                      f"data.train=[{{path: {data}, weight: 1}}, {{path: {data}/doc03.txt, weight: 0.5}}]"],
        "dpo": ["model.lora.rank=0", "dpo.precompute_reference=true", f"data.train=[{data}]"],
    }[task]
    return [f"model.path={model_dir}", f"task={task}", f"output_dir={out_dir}", f"train.steps={STEPS}",
            "train.batch_size=4", "train.seq_len=32", "train.learning_rate=0.005", "train.warmup_steps=3",
            "train.log_every=1", "eval.every=0", "eval.sample_prompts=0", "checkpoint.every=2", "checkpoint.keep=2",
            "data.shuffle_buffer=16", "data.eval=[]", *per_task]


def command(*args):
    return [sys.executable, "-m", "jaxlm.train", "--no-progress", *overrides(*args)]


def final_weights(out_dir, task):
    from safetensors.numpy import load_file

    name = ("adapter", "adapter_model.safetensors") if task == "causal_lm" else ("hf", "model.safetensors")
    return load_file(os.path.join(out_dir, *name))


def write_pairs(path) -> str:
    """36 preference pairs in TRL's standard form: the 12 steps of 4 go through them more than once."""
    words = ["red", "green", "blue", "cold", "warm", "fast", "slow", "tall", "short", "old", "new", "dark"]
    rows = [{"prompt": f"which is {w}", "chosen": f" the {w} one", "rejected": f" no {words[(i + 3) % 12]}"}
            for i, w in enumerate(words * 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return write_tiny_llama(root / "llama"), {"causal_lm": write_text(root / "text"),
                                              "dpo": write_pairs(root / "pairs.jsonl")}, root


@pytest.mark.parametrize("task", ["causal_lm", "dpo"])
def test_sigkill_mid_run_then_rerun_reaches_the_same_parameters_bitwise(assets, task):
    """With the default (static) mixing. A bandit run's resume replays its weights: test_data_pipeline.py checks
    that on the pipeline alone (a second SIGKILL run, with bandit mixing, cost CI a minute)."""
    model_dir, data, root = assets
    data, root = data[task], root / task
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    train(load_config(None, overrides(model_dir, data, root / "straight", task)), progress=False)

    out = root / "killed"
    proc = subprocess.Popen(command(model_dir, data, out, task), env=env, stdout=subprocess.DEVNULL,
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

    resumed = subprocess.run(command(model_dir, data, out, task), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {out / 'checkpoints'} at step {resumed_from}" in resumed.stdout

    expected, got = final_weights(root / "straight", task), final_weights(out, task)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    # The metrics of the resumed run continue the log without gaps or duplicates, with the same losses
    # (per source when mixing; DPO's rewards and log-probs, which read the precomputed reference).
    def learned(row):
        return {k: v for k, v in row.items() if k == "loss" or k.startswith(("train_loss/", "rewards/", "logps/"))}

    straight = {r["step"]: learned(r) for r in read_metrics(str(root / "straight" / "metrics.jsonl"))}
    rows = read_metrics(str(out / "metrics.jsonl"))
    assert [r["step"] for r in rows] == sorted(straight)
    assert {r["step"]: learned(r) for r in rows} == straight
    if task == "dpo":
        assert all("rewards/margins" in r for r in rows)
