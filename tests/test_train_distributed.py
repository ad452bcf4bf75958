"""Multi-process training on one machine: two processes x 2 CPU devices (JAX's distributed runtime,
gloo collectives) against one process x 4 devices given the same global batches.

Each process of a distributed run reads its own shard of every source (record k goes to process
k % 2) and contributes its rows of every global batch, process 0's first. The reference run is one
process whose pipeline yields exactly that: shard 0's batch rows, then shard 1's.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxlm.train.metrics import read_metrics
from train_helpers import with_devices, write_text, write_tiny_llama

STEPS = 8
TESTS = Path(__file__).resolve().parent


def overrides(model_dir, text_dir, out_dir, *extra):
    return [
        f"model.path={model_dir}", "task=causal_lm", f"output_dir={out_dir}", f"train.steps={STEPS}",
        "train.batch_size=4", "train.seq_len=32", "train.learning_rate=0.005", "train.warmup_steps=2",
        "train.log_every=1", "eval.every=4", "eval.steps=0", "eval.sample_tokens=8", "checkpoint.every=2",
        "checkpoint.keep=2", "model.lora.rank=4", "data.shuffle_buffer=16",
        f"data.train=[{{path: {text_dir}/a, weight: 1}}, {{path: {text_dir}/b, weight: 0.5}}]",
        f"data.eval=[{{path: {text_dir}/c}}]",  # 3 documents: the shards differ in eval batches
        f"data.test=[{{path: {text_dir}/b}}]",  # scored before and after; the general prompts answered too
        *extra,
    ]


def env_for(devices: int, cache: Path, **extra) -> dict:
    """Each process sees `devices` CPU devices; compiled programs are cached for the runs that follow."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    return {**env, "XLA_FLAGS": with_devices(devices), "JAX_PLATFORMS": "cpu",
            "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_pair(args: list[str], log_dir: Path, cache: Path) -> list[subprocess.Popen]:
    """`python -m jaxlm.train --distributed ARGS` as processes 0 and 1 of one run."""
    port = free_port()
    procs = []
    for i in range(2):
        env = env_for(2, cache, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                      JAX_PROCESS_ID=str(i))
        log = open(log_dir / f"process{i}.log", "w")  # noqa: SIM115  the child writes to it until it ends
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxlm.train", "--distributed", "--no-progress", *args],
                                      env=env, cwd=TESTS.parent, stdout=log, stderr=subprocess.STDOUT, text=True))
    return procs


def wait_all(procs, timeout=600) -> list[int]:  # generous: a loaded 2-core machine is slow, not stuck
    return [p.wait(timeout=timeout) for p in procs]


def committed(checkpoints: Path) -> list[int]:
    """Steps whose checkpoint is complete (Orbax renames a step's folder to the bare number when it is)."""
    return [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()] if checkpoints.exists() else []


def adapters(out_dir) -> dict:
    from safetensors.numpy import load_file

    return load_file(os.path.join(out_dir, "adapter", "adapter_model.safetensors"))


def reference_run(args: list[str]) -> None:
    """One process, 4 devices, fed each global batch as the two processes build it (run in a subprocess)."""
    from jaxlm.data import build_from_config
    from jaxlm.train import loop, run
    from jaxlm.train.config import load_config
    from jaxlm.train.inputs import padded_to

    class TwoShards:
        def __init__(self, shards):
            self.shards, self.label_names, self.source_names = shards, shards[0].label_names, shards[0].source_names

        def __iter__(self):  # a shorter (finite) shard is padded with batches that count for nothing
            for parts in itertools.zip_longest(*self.shards):
                like = next(p for p in parts if p is not None)
                parts = [p if p is not None else padded_to([like], 2)[1] for p in parts]
                yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

        def stats(self):
            return self.shards[0].stats()

        def get_state(self):
            return [s.get_state() for s in self.shards]

        def set_state(self, states):
            raise AssertionError("the reference run never resumes")

    def build_pipelines(cfg, tokenizer):
        def shards(split):
            return TwoShards([build_from_config(cfg.data, tokenizer, task=cfg.task, seq_len=cfg.train.seq_len,
                                                batch_size=cfg.train.batch_size // 2, seed=cfg.train.seed,
                                                split=split, shard_index=i, shard_count=2) for i in range(2)])

        return shards("train"), shards("eval"), shards("test")

    run.build_pipelines = build_pipelines
    loop.train(load_config(None, args), progress=False)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    write_text(root / "text" / "a")
    write_text(root / "text" / "b", n_docs=4)
    write_text(root / "text" / "c", n_docs=3)
    return write_tiny_llama(root / "llama"), str(root / "text"), root


def test_two_processes_killed_and_resumed_reach_the_parameters_of_one_process(assets):
    model_dir, text_dir, root = assets
    reference = subprocess.Popen(  # alongside the first pair: the two processes often wait for each other
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(TESTS)!r}); "
         "from test_train_distributed import reference_run; reference_run(sys.argv[1:])",
         *overrides(model_dir, text_dir, root / "reference")],
        env=env_for(4, root / "xla-cache"), cwd=TESTS.parent, stdout=open(root / "reference.log", "w"),  # noqa: SIM115  for the child
        stderr=subprocess.STDOUT)

    out = root / "pair"
    args = overrides(model_dir, text_dir, out)
    procs = launch_pair(args, root, root / "xla-cache")
    deadline = time.time() + 600
    while time.time() < deadline and all(p.poll() is None for p in procs):
        steps = [r["step"] for r in read_metrics(str(out / "metrics.jsonl"))]
        if steps and max(steps) >= STEPS // 2 + 1 and committed(out / "checkpoints"):  # mid-run, with a checkpoint
            break
        time.sleep(0.02)
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
    assert wait_all(procs) == [-signal.SIGKILL] * 2, (root / "process0.log").read_text()[-3000:]
    killed_at = max(r["step"] for r in read_metrics(str(out / "metrics.jsonl")))
    assert killed_at < STEPS, "the run finished before it could be killed"
    resume_from = max(committed(out / "checkpoints"))
    assert reference.wait(timeout=600) == 0, (root / "reference.log").read_text()[-3000:]

    procs = launch_pair(args, root, root / "xla-cache")
    codes = wait_all(procs)
    logs = [(root / f"process{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "distributed (from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID): process 1 of 2, " \
           "2 of 4 devices here" in logs[1]
    assert f"resumed from {out / 'checkpoints'} at step {resume_from}" in logs[0]
    assert "resumed from" not in logs[1]  # process 0 alone prints and writes

    expected, got = adapters(root / "reference"), adapters(out)
    assert expected.keys() == got.keys()
    for name in expected:  # the same numbers up to the order of the cross-device sums (|diff| ~3e-7 seen)
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    rows, reference_rows = (read_metrics(str(d / "metrics.jsonl")) for d in (out, root / "reference"))
    assert [r["step"] for r in rows] == [0, *range(1, STEPS + 1)]  # one writer; the resumed steps rewritten
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    expected_evals = [(r["step"], r["eval_loss"]) for r in reference_rows if "eval_loss" in r]
    assert [s for s, _ in evals] == [s for s, _ in expected_evals] == [0, 4, 8]
    np.testing.assert_allclose([v for _, v in evals], [v for _, v in expected_evals], rtol=1e-5)
    # The report a person reads, as the one-process run writes it: the model exported, the same answers to
    # the general prompts (process 0 generates alone on its whole copy), the same data.test scores.
    assert (out / "hf" / "model.safetensors").exists()
    assert (out / "samples.md").read_text() == (root / "reference" / "samples.md").read_text()
    tested, expected_tests = (json.loads((d / "test_metrics.json").read_text()) for d in (out, root / "reference"))
    assert tested["steps"] == expected_tests["steps"] == {"before": 0, "after": STEPS}
    for side in ("before", "after"):
        for key in ("loss", "perplexity", "token_accuracy"):
            np.testing.assert_allclose(tested[side][key], expected_tests[side][key], rtol=1e-5, err_msg=key)


def test_a_process_that_fails_stops_the_other_with_its_reason(assets, tmp_path):
    model_dir, text_dir, root = assets
    single = tmp_path / "one.txt"  # one record: process 0's shard has it, process 1's is empty
    single.write_text("the cat sat on a mat\n")
    args = overrides(model_dir, text_dir, tmp_path / "run", f"data.train=[{{path: {text_dir}/a}}, {{path: {single}}}]")
    procs = launch_pair(args, tmp_path, root / "xla-cache")
    failed = procs[1].wait(timeout=600)
    failed_at = time.time()
    stopped = procs[0].wait(timeout=120)
    logs = [(tmp_path / f"process{i}.log").read_text() for i in range(2)]
    assert [stopped, failed] == [2, 2], logs
    assert time.time() - failed_at < 30  # ~1 s measured; without the stop it blocks for minutes
    reason = f"data error: {single}:0: no usable records for this host/split"
    assert reason in logs[1] and "stopped:" not in logs[1]
    assert f"stopped: process 1: {reason}" in logs[0]


def test_partial_coordinator_settings_are_a_one_line_error(monkeypatch, capsys):
    from jaxlm.train.cli import main

    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    assert main(["--distributed"]) == 2
    assert capsys.readouterr().err == ("distributed error: set all of JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                                       "JAX_PROCESS_ID or none of them (only JAX_NUM_PROCESSES is set)\n")
