"""The loop on real runs: GPT-2 trains too, early stopping keeps the best checkpoint, hooks see sync points."""

from __future__ import annotations

import os
import signal

import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import transformers

from hf_checkpoints import tiny_gpt2
from jaxlm.errors import interrupts_between, raise_if_interrupted
from jaxlm.train import train
from jaxlm.train.checkpointing import Checkpointer
from jaxlm.train.metrics import read_metrics
from train_helpers import WORDS, llama_tokenizer, tiny_config, write_sft_jsonl, write_text, write_tiny_llama


def test_a_tiny_gpt2_learns_sft_and_exports_what_transformers_computes(tmp_path):
    model_dir = tmp_path / "gpt2"
    tiny_gpt2(model_dir)
    llama_tokenizer().save_pretrained(model_dir)  # byte-level BPE with a chat template; GPT-2 ids fit
    cfg = tiny_config(tmp_path, str(model_dir), "sft", [write_sft_jsonl(tmp_path / "chat.jsonl")])
    result = train(cfg, progress=False)
    losses = [loss for _, loss in result.eval_losses]
    assert [s for s, _ in result.eval_losses] == [0, 4, 8]
    assert losses[-1] < losses[0] - 1.0, losses  # 5.76 -> 3.48 when written

    hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(cfg.output_dir, "hf")).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    ids = np.array([[5, 17, 33, 9, 60, 2]], np.int32)
    with torch.no_grad():
        expected = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(np.asarray(result.model(ids)), expected, atol=2e-4)


def _write_docs(path, words: list[str], n_docs: int, shift: int = 0, length: int = 60) -> str:
    os.makedirs(path, exist_ok=True)
    for d in range(n_docs):
        text = " ".join(words[(d * 7 + i * 3 + shift) % len(words)] for i in range(length))
        with open(os.path.join(path, f"doc{d}.txt"), "w") as f:
            f.write(text + "\n")
    return str(path)


def test_early_stopping_stops_when_the_eval_loss_rises_and_keeps_the_best_checkpoint(tmp_path):
    # One training document, memorised at a constant learning rate: the held-out loss (other word
    # orders) falls for three evaluations, then rises (when written: 5.80, 5.44, 4.56, 4.34, 4.63, 4.53).
    train_dir = _write_docs(tmp_path / "train", WORDS, n_docs=1)
    eval_dir = _write_docs(tmp_path / "eval", WORDS[::-1], n_docs=4, shift=5)
    cfg = tiny_config(tmp_path, write_tiny_llama(tmp_path / "llama"), "causal_lm", [train_dir],
                      "train.steps=40", "train.schedule=constant", "train.warmup_steps=0", "eval.every=2",
                      "eval.early_stopping_patience=2", "checkpoint.every=4", "checkpoint.keep=1",
                      eval_sources=[eval_dir])
    result = train(cfg, progress=False, export=False)

    evals = dict(result.eval_losses)
    best = min((s for s in evals if s > 0), key=evals.get)  # step 0 is the untrained model: no checkpoint
    assert result.stop_reason == "early_stopping" and result.step < cfg.train.steps
    assert list(evals)[-3] == best and best > 2, evals  # it improved, then stopped after two evals without
    assert all(evals[s] > evals[best] for s in list(evals)[-2:])

    ckpt = Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), keep=1)
    try:  # kept: the latest and the best; the regular save between them is gone
        assert ckpt.all_steps() == [best, result.step] and ckpt.best_step() == best
        assert ckpt.manager.metrics(best)["eval_loss"] == pytest.approx(evals[best])
        loop = ckpt.manager.restore(best, args=ocp.args.Composite(loop=ocp.args.JsonRestore())).loop
        assert loop["loop"] == {"best_eval_loss": pytest.approx(evals[best]), "evals_since_best": 0,
                                "first_eval_loss": pytest.approx(evals[0])}
    finally:
        ckpt.close()


def test_the_best_checkpoint_outlives_a_restart_and_later_saves(tmp_path):
    state = {"w": np.ones(3, np.float32)}
    ckpt = Checkpointer(str(tmp_path), keep=1)
    for step, eval_loss in [(2, 3.0), (4, 1.0), (6, 2.0)]:
        ckpt.save(step, state, {"step": step}, eval_loss)
    ckpt.close()
    ckpt = Checkpointer(str(tmp_path), keep=1)  # a resumed run: the eval losses are read back from disk
    assert ckpt.best_step() == 4
    ckpt.save(8, state, {"step": 8}, 2.5)
    ckpt.save(10, state, {"step": 10})  # a periodic save without an evaluation
    ckpt.close()
    ckpt = Checkpointer(str(tmp_path), keep=1)
    assert ckpt.all_steps() == [4, 10] and ckpt.best_step() == 4
    ckpt.close()


class SyncRecorder:
    """A `SyncHook` that keeps what it saw, where a learned mixing policy would update source weights."""

    name = "recorder"

    def __init__(self):
        self.seen, self.restored = [], None

    def on_sync(self, step, rows, data):
        self.seen.append((step, [r["step"] for r in rows], all(np.isfinite(r["loss"]) for r in rows)))
        rows[-1]["recorder/syncs"] = len(self.seen)

    def state(self):
        return {"syncs": len(self.seen)}

    def restore(self, state):
        self.restored = state


class CtrlC(SyncRecorder):
    """Presses Ctrl-C at the sync point of step `at` (SIGINT raised in this thread, as a terminal sends it)."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def on_sync(self, step, rows, data):
        super().on_sync(step, rows, data)
        if step == self.at:
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_stops_training_after_the_step_it_came_in(tmp_path, capfd):
    # Noted, not raised inside the hook: the sync point finishes (steps 1-2 logged) and the run stops after the
    # next call (steps 3-4) is dispatched.
    cfg = tiny_config(tmp_path, write_tiny_llama(tmp_path / "llama"), "causal_lm", [write_text(tmp_path / "text")],
                      "train.steps=8", "train.log_every=2", "eval.every=0", "checkpoint.every=8")
    handler = signal.getsignal(signal.SIGINT)
    hook = CtrlC(at=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, export=False, hooks=[hook])
    assert signal.getsignal(signal.SIGINT) is handler  # put back as it was
    assert [step for step, *_ in hook.seen] == [2]
    assert [r["step"] for r in read_metrics(os.path.join(cfg.output_dir, "metrics.jsonl")) if "loss" in r] == [1, 2]
    assert "interrupt: stopping after the step under way" in capfd.readouterr().err  # heard at once


def test_a_ctrl_c_that_lands_in_a_finalizer_still_stops_the_run_and_a_second_one_stops_it_at_once():
    """Python's own handler raises KeyboardInterrupt in whatever code runs next; in a `__del__` (a garbage
    collection mid-step), Python prints it and goes on. Inside `interrupts_between` it is noted instead."""

    class Finalized:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    went_on = []
    with pytest.raises(KeyboardInterrupt), interrupts_between("stopping"):
        Finalized()  # dropped at once: Ctrl-C arrives inside its __del__
        went_on.append(True)
        raise_if_interrupted()
    assert went_on == [True]  # raised by the check, where the work can stop whole, not inside the finalizer

    went_on = []
    with pytest.raises(KeyboardInterrupt), interrupts_between("stopping"):
        signal.raise_signal(signal.SIGINT)
        went_on.append(True)
        signal.raise_signal(signal.SIGINT)  # a second press: for work stuck where no check comes
        went_on.append(True)
    assert went_on == [True]


def test_a_sync_hook_sees_every_sync_point_and_its_state_is_checkpointed_and_resumed(tmp_path):
    cfg = tiny_config(tmp_path, write_tiny_llama(tmp_path / "llama"), "causal_lm", [write_text(tmp_path / "text")],
                      "train.steps=4", "train.log_every=1", "eval.every=0", "checkpoint.every=2")
    hook = SyncRecorder()
    train(cfg, progress=False, export=False, hooks=[hook])
    assert hook.seen == [(1, [1], True), (2, [2], True), (3, [3], True), (4, [4], True)]
    rows = read_metrics(os.path.join(cfg.output_dir, "metrics.jsonl"))
    assert [r.get("recorder/syncs") for r in rows] == [None, 1, 2, 3, 4]  # step 0 is the first evaluation

    again = SyncRecorder()
    result = train(cfg, progress=False, export=False, hooks=[again])
    assert result.stop_reason == "already_complete" and again.restored == {"syncs": 4} and again.seen == []
