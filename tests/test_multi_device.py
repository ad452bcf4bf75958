"""Every command on four CPU devices, as on a GPU node or a TPU slice, with default settings.

One process with 4 devices and one with 1 device run the same commands (`run_commands`, in subprocesses:
the device count is fixed when JAX starts). The 4-device training run keeps every default that a tiny model
allows (LoRA SFT, sample answers and general prompts before and after, data.test scores) and must leave the
same files as the 1-device run: the same answers, the same test scores, weights within float tolerance.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synth_helpers import tiny_synth_model
from train_helpers import with_devices, write_sft_jsonl, write_tiny_llama

TESTS = Path(__file__).resolve().parent

# Short but otherwise default: every eval and report setting keeps its default value.
TRAIN = ["train.steps=4", "train.batch_size=4", "train.seq_len=32", "eval.every=2", "eval.steps=1",
         "eval.sample_tokens=8", "checkpoint.every=2"]


def commands(assets: dict, out: str, devices: int = 4) -> dict[str, list[str]]:
    llama, sft, test = assets["llama"], assets["sft"], assets["test"]
    fsdp = f"mesh.fsdp={2 if devices > 1 else 1}"  # parameters and optimizer state sharded over 2 of the 4
    run = f"{out}/train"
    return {
        "train": ["train", "--no-progress", f"model.path={llama}", f"output_dir={run}", f"data.train=[{sft}]",
                  f"data.test=[{test}]", *TRAIN],
        "train full, scanned, fsdp, bandit": [
            "train", "--no-progress", f"model.path={llama}", f"output_dir={out}/full", *TRAIN,
            f"data.train=[{{path: {sft}}}, {{path: {test}}}]", "data.mixing=bandit", "model.lora.rank=0",
            "model.scan_layers=true", fsdp],
        "eval": ["eval", "--model", run, "--data", test, "--out", f"{out}/eval", "--no-progress",
                 "--max-new-tokens", "8"],
        "generate": ["generate", "--model", f"{run}/hf", "--prompt", "hello there", "--max-new-tokens", "8", "--json",
                     "--compile-cache", "none"],
        "audit": ["audit", sft, "--model", llama, "--out", f"{out}/audit", "--quiet"],
        "convert": ["convert", run, f"{out}/model.gguf"],
        "synth": ["synth", "self-instruct", "--model", assets["synth_model"], "--out", f"{out}/synth", "--num", "2",
                  "--batch-size", "2", "--max-new-tokens", "4", "--instruction-tokens", "4", "--rounds", "1",
                  "--quiet"],
    }


def run_commands(assets_json: str, out: str, names_json: str) -> None:
    """In a fresh process: each command through `jaxlm.cli.main`, its status and stdout in OUT/status.json."""
    import contextlib
    import io

    import jax

    from jaxlm import cli

    assets, names = json.loads(assets_json), json.loads(names_json)
    results = {"devices": jax.device_count()}
    for name, argv in commands(assets, out, jax.device_count()).items():
        if name in names:
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                status = cli.main(argv)
            results[name] = {"status": status, "stdout": stdout.getvalue()}
    with open(os.path.join(out, "status.json"), "w") as f:
        json.dump(results, f)


def launch(devices: int, assets: dict, out: Path, names: list[str]) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(XLA_FLAGS=with_devices(devices), JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3")
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); from test_multi_device import run_commands; "
            "run_commands(*sys.argv[1:])")
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(assets), str(out), json.dumps(names)], env=env,
                            cwd=TESTS.parent, stdout=open(out / "log.txt", "w"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """The two processes' results, made once per test run. `make test` keeps a file's tests on one worker
    (`--dist loadfile`); under other modes pytest-xdist may hand them to several, so the first worker makes
    the runs in a folder that all workers share, under a lock, and the others read them."""
    import fcntl

    base = tmp_path_factory.getbasetemp()  # under xdist each worker's own folder inside the run's folder
    root = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "multi_device"  # this run's only
    with open(f"{root}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (root / "done").exists():
            _make_runs(root)
            (root / "done").write_text("")
    return {devices: {"dir": root / name, **json.loads((root / name / "status.json").read_text())}
            for devices, name in ((4, "four"), (1, "one"))}


def _make_runs(root: Path) -> None:
    root.mkdir(exist_ok=True)
    assets = {"llama": write_tiny_llama(root / "llama"), "sft": write_sft_jsonl(root / "chat.jsonl"),
              "test": write_sft_jsonl(root / "test.jsonl", n=8), "synth_model": tiny_synth_model(root / "synth_model")}
    everything = list(commands(assets, "").keys())
    procs = {"four": launch(4, assets, root / "four", everything),
             "one": launch(1, assets, root / "one", [n for n in everything if n != "synth"])}
    for name, proc in procs.items():
        assert proc.wait(timeout=900) == 0, (root / name / "log.txt").read_text()[-5000:]


def exited_0(runs, name: str) -> None:
    for devices in (4, 1):
        if name in runs[devices]:
            log = (runs[devices]["dir"] / "log.txt").read_text()
            assert runs[devices][name]["status"] == 0, f"{name} on {devices} device(s):\n{log[-5000:]}"
    assert runs[4]["devices"] == 4 and runs[1]["devices"] == 1


def weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        found.update(load_file(path))
    return found


def assert_same_up_to_last_digit(got: str, expected: str) -> None:
    """The same text, whose printed numbers may differ by one in their last digit: the cross-device sums add up in
    another order, and a perplexity of 320.4235 may print as 320.423 on one device and 320.424 on four."""
    got_parts, expected_parts = re.split(r"(-?\d+\.\d+)", got), re.split(r"(-?\d+\.\d+)", expected)
    assert got_parts[::2] == expected_parts[::2], "the text around the numbers differs"
    for a, b in zip(got_parts[1::2], expected_parts[1::2], strict=True):
        decimals = len(b.split(".")[1])
        assert abs(float(a) - float(b)) <= 1.01 * 10.0**-decimals, f"{a} != {b}"


def assert_close_tree(got, expected, path="") -> None:
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), path
        for key in expected:
            assert_close_tree(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert_close_tree(g, e, f"{path}[{i}]")
    elif isinstance(expected, float):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6, err_msg=path)
    else:
        assert got == expected, path


@pytest.mark.parametrize("run_dir", ["train", "full"])
def test_training_on_four_devices_leaves_what_one_device_leaves(runs, run_dir):
    exited_0(runs, "train" if run_dir == "train" else "train full, scanned, fsdp, bandit")
    four, one = runs[4]["dir"] / run_dir, runs[1]["dir"] / run_dir
    expected, got = weights(one / "hf"), weights(four / "hf")
    assert expected and expected.keys() == got.keys()
    for name in expected:  # the same numbers up to the order of the cross-device sums
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert not (four / "report_error.log").exists()
    # the default report: answers to held-out and general prompts before and after, the same on both
    assert_same_up_to_last_digit((four / "samples.md").read_text(), (one / "samples.md").read_text())
    samples = json.loads((four / "samples.json").read_text())
    assert samples["general"] and all(row["after"] is not None for row in samples["prompts"] + samples["general"])
    if run_dir == "train":  # LoRA, with data.test: its questions answered, its scores before and after
        assert samples["scores"]["after"]["answers"]["examples"] == 3
        assert (four / "adapter" / "adapter_model.safetensors").exists()
        assert_close_tree(json.loads((four / "test_metrics.json").read_text()),
                          json.loads((one / "test_metrics.json").read_text()))


def test_eval_on_four_devices_scores_as_one_device(runs):
    exited_0(runs, "eval")
    four, one = (json.loads((runs[d]["dir"] / "eval" / "eval.json").read_text()) for d in (4, 1))
    assert "rouge_l" in four["scores"]["answers"] and four["general"]
    assert_close_tree(four["scores"], one["scores"])


def test_generate_on_four_devices_answers_as_one_device(runs):
    exited_0(runs, "generate")
    four, one = (json.loads(runs[d]["generate"]["stdout"].splitlines()[-1]) for d in (4, 1))
    assert four["text"] == one["text"] and four["token_ids"] == one["token_ids"]


def test_audit_on_four_devices(runs):
    exited_0(runs, "audit")
    four, one = (json.loads((runs[d]["dir"] / "audit" / "report.json").read_text()) for d in (4, 1))
    np.testing.assert_allclose(four["authenticity"]["perplexity"]["mean"], one["authenticity"]["perplexity"]["mean"],
                               rtol=1e-4)


def test_convert_on_four_devices(runs):
    exited_0(runs, "convert")
    four, one = ((runs[d]["dir"] / "model.gguf").read_bytes() for d in (4, 1))
    assert len(four) == len(one) > 0


def test_synth_on_four_devices(runs):
    exited_0(runs, "synth")
    summary = json.loads((runs[4]["dir"] / "synth" / "summary.json").read_text())
    assert summary["generated"] >= 1
