"""data.mixing=bandit in a real (tiny) run: the weights leave a noise source for a learnable one."""

from __future__ import annotations

import os
import random

from jaxlm.train import train
from jaxlm.train.metrics import read_metrics
from train_helpers import WORDS, tiny_config, write_text, write_tiny_llama


def write_noise(path, n_docs: int = 12) -> str:
    """The learnable source's words drawn at random: nothing to learn beyond how often each occurs."""
    rng = random.Random(0)
    os.makedirs(path, exist_ok=True)
    for d in range(n_docs):
        with open(os.path.join(path, f"noise{d:02d}.txt"), "w") as f:
            f.write(" ".join(rng.choice(WORDS) for _ in range(40 + d)) + "\n")
    return str(path)


def test_learning_progress_moves_weight_from_a_noise_source_to_a_learnable_one(tmp_path):
    # The default reward (progress) is the honest one here: the noise source has the higher loss
    # throughout, so ODM's loss reward would move weight towards it (tests/test_data_bandit.py).
    text, noise = write_text(tmp_path / "text"), write_noise(tmp_path / "noise")
    cfg = tiny_config(tmp_path, write_tiny_llama(tmp_path / "llama"), "causal_lm", [text, noise],
                      "train.steps=60", "train.log_every=2", "eval.every=0", "checkpoint.every=60",
                      "data.eval_fraction=0", "data.mixing=bandit", "data.bandit.update_every=2",
                      "data.bandit.learning_rate=2")
    train(cfg, progress=False, export=False)

    rows = read_metrics(os.path.join(cfg.output_dir, "metrics.jsonl"))
    last = rows[-1]
    assert last[f"weight/{text}"] > 0.6 and last[f"weight/{text}"] + last[f"weight/{noise}"] == 1.0
    assert last[f"share/tokens/{text}"] > 0.5  # the realised mixture followed
    losses = [r for r in rows if f"train_loss/{noise}" in r and f"train_loss/{text}" in r]
    assert losses[-1][f"train_loss/{text}"] < losses[-1][f"train_loss/{noise}"]
    assert os.path.getsize(os.path.join(cfg.output_dir, "mixing.png")) > 0
