"""Several optimizer steps in one compiled call (train.steps_per_call): chosen so that no sync point falls inside
a call, and training as one step a call does, resumed runs included."""

from __future__ import annotations

import numpy as np
import pytest

from jaxlm.errors import ConfigError
from jaxlm.train import train
from jaxlm.train.config import load_config
from jaxlm.train.engine import Engine, steps_per_call
from jaxlm.train.metrics import read_metrics
from train_helpers import tiny_config, write_sft_jsonl, write_tiny_llama


@pytest.mark.parametrize(("overrides", "platform", "expected"), [
    ([], "cpu", 5),  # the defaults: 60 steps, logs every 5, evaluations and checkpoints every 20
    (["train.steps=48", "train.log_every=8", "checkpoint.every=16", "eval.every=16"], "cpu", 8),
    (["train.steps=48", "train.log_every=16", "checkpoint.every=16", "eval.every=16"], "cpu", 8),  # at most 8
    (["train.steps=8", "train.log_every=2", "checkpoint.every=4", "eval.every=0"], "cpu", 2),  # 0: at the end
    (["train.steps=9", "train.log_every=3", "checkpoint.every=9", "eval.every=3"], "cpu", 3),
    (["train.steps=7"], "cpu", 1),
    ([], "gpu", 1),  # the runtime's memory pool outlives a call there
    (["task=grpo", "grpo.rewards=[{type: exact, field: answer}]"], "cpu", 1),  # it samples from the last step
    (["train.steps_per_call=4", "train.steps=40", "train.log_every=4"], "gpu", 4),  # asked for: given everywhere
])
def test_auto_steps_per_call_divides_every_sync_interval(overrides, platform, expected):
    assert steps_per_call(load_config(None, overrides), platform) == expected


@pytest.mark.parametrize(("overrides", "key"), [
    (["train.steps_per_call=4"], "train.log_every=5"),
    (["train.steps_per_call=5", "checkpoint.every=12"], "checkpoint.every=12"),
    (["train.steps_per_call=5", "eval.every=8"], "eval.every=8"),
    (["train.steps_per_call=5", "train.steps=12"], "train.steps=12"),
    (["train.steps_per_call=5", "task=grpo"], "task grpo"),
    (["train.steps_per_call=-1"], "train.steps_per_call"),
])
def test_a_steps_per_call_that_would_split_a_sync_interval_is_refused_naming_it(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, overrides)


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(str(run_dir / "metrics.jsonl")) if "loss" in r}


def test_two_steps_a_call_train_as_one_step_a_call_and_log_every_step(tmp_path, monkeypatch):
    calls = []
    steps = Engine.steps
    monkeypatch.setattr(Engine, "steps", lambda self, batches: calls.append(len(batches)) or steps(self, batches))
    model = write_tiny_llama(tmp_path / "llama")
    data = [write_sft_jsonl(tmp_path / "chat.jsonl")]
    runs = {}
    for per_call in ("0", "1"):
        cfg = tiny_config(tmp_path / per_call, model, "sft", data, f"train.steps_per_call={per_call}")
        runs[per_call] = train(cfg, progress=False, export=False)
    assert calls == [2, 2, 2, 2]  # the auto run (8 steps, logs every 2): four calls; the other none

    auto, single = (_losses(tmp_path / k / "run") for k in ("0", "1"))
    assert sorted(auto) == list(range(1, 9)) == sorted(single)
    np.testing.assert_allclose([auto[s] for s in range(1, 9)], [single[s] for s in range(1, 9)], rtol=1e-5)
    assert len(set(auto.values())) == 8  # each row is its own step's
    np.testing.assert_allclose([loss for _, loss in runs["0"].eval_losses],
                               [loss for _, loss in runs["1"].eval_losses], rtol=1e-5)
    assert runs["0"].step == runs["1"].step == 8


def test_a_run_resumed_off_the_call_boundary_steps_alone_up_to_it(tmp_path):
    # 3 steps one a call (3 is prime), then resumed to 8 at two a call: step 4 alone, then 5-6 and 7-8 together,
    # the same losses as 8 steps two a call straight through (a constant rate: the schedule ignores train.steps).
    model = write_tiny_llama(tmp_path / "llama")
    data = [write_sft_jsonl(tmp_path / "chat.jsonl")]
    same = ("train.schedule=constant", "train.warmup_steps=0")
    straight = tiny_config(tmp_path / "straight", model, "sft", data, *same)
    train(straight, progress=False, export=False)
    first = tiny_config(tmp_path / "resumed", model, "sft", data, *same, "train.steps=3", "train.log_every=1",
                        "checkpoint.every=3", "eval.every=3")
    assert steps_per_call(first, "cpu") == 1 and steps_per_call(straight, "cpu") == 2
    train(first, progress=False, export=False)
    resumed = train(tiny_config(tmp_path / "resumed", model, "sft", data, *same), progress=False, export=False)

    assert resumed.step == 8 and [s for s, _ in resumed.eval_losses] == [0, 4, 8]  # no sync point skipped
    expected, got = _losses(tmp_path / "straight" / "run"), _losses(tmp_path / "resumed" / "run")
    assert sorted(got) == list(range(1, 9))
    np.testing.assert_allclose([got[s] for s in range(1, 9)], [expected[s] for s in range(1, 9)], rtol=1e-5)
