"""The EXP3 mixing policy on synthetic losses: where it moves weight, the floor, and its saved state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxlm.data.bandit import BanditMixing, Exp3
from jaxlm.data.config import BanditConfig
from jaxlm.errors import ConfigError


def losses(updates: int, seed: int = 0):
    """Three sources: 0 keeps learning (its loss falls), 1 is learned already, 2 is noise (high, flat)."""
    rng = np.random.default_rng(seed)
    for t in range(updates):
        yield np.array([4.0 * np.exp(-t / 40), 1.0, 6.0]) + rng.normal(0, 0.05, 3)


def run(policy: Exp3, updates: int) -> list[np.ndarray]:
    return [policy.update(mean) for mean in losses(updates)]


def test_progress_reward_moves_weight_to_the_source_still_learning_and_keeps_the_floor():
    policy = Exp3(BanditConfig(reward="progress", learning_rate=2.0, floor=0.05), prior=[1, 1, 1])
    history = np.array(run(policy, 60))
    np.testing.assert_allclose(history.sum(axis=1), 1.0)
    assert history.min() >= 0.05 - 1e-12
    assert history[-1].argmax() == 0 and history[-1][0] > 0.6
    assert history[-1][2] < 1 / 3  # noise loses weight though its loss is the highest


def test_loss_reward_moves_weight_to_the_highest_loss_even_when_it_is_noise():
    policy = Exp3(BanditConfig(reward="loss", learning_rate=2.0, floor=0.05), prior=[1, 1, 1])
    final = run(policy, 60)[-1]
    assert final.argmax() == 2  # ODM's reward: the noise source, whose loss cannot fall, wins


def test_no_reward_however_extreme_takes_a_source_below_the_floor():
    policy = Exp3(BanditConfig(reward="loss", learning_rate=50.0, floor=0.1), prior=[1, 1, 1, 1])
    for t in range(30):
        p = policy.update([1000.0, 0.0, 0.0 if t % 2 else np.nan, 1e-6])
        assert p.min() >= 0.1 - 1e-12 and p.sum() == pytest.approx(1.0)
    assert p[0] == pytest.approx(1 - 3 * 0.1)


def test_the_prior_is_where_the_weights_start_and_an_unseen_source_keeps_its_estimate():
    policy = Exp3(BanditConfig(floor=0.0), prior=[3, 1])
    np.testing.assert_allclose(policy.probabilities(), [0.75, 0.25])
    policy.update([2.0, 2.0])
    before = policy.estimate.copy()
    policy.update([1.0, np.nan])  # source 1 drew no rows in this interval
    assert policy.estimate[1] == before[1] and policy.estimate[0] > before[0]


def test_saved_state_survives_json_and_continues_bitwise():
    config = BanditConfig(learning_rate=1.5)
    straight, first = Exp3(config, [1, 1, 1]), Exp3(config, [1, 1, 1])
    means = list(losses(30))
    expected = [straight.update(m) for m in means]
    for m in means[:12]:
        first.update(m)
    resumed = Exp3(config, [1, 1, 1])
    resumed.restore(json.loads(json.dumps(first.state())))
    for m, want in zip(means[12:], expected[12:], strict=False):
        np.testing.assert_array_equal(resumed.update(m), want)


class FakePipeline:
    def __init__(self, weights):
        self.requested_shares, self.calls = np.asarray(weights), []

    def set_weights(self, weights, *, from_batch):
        self.calls.append(from_batch)
        self.requested_shares = weights


def test_the_hook_updates_every_interval_from_the_next_batch_and_logs_weights_by_source():
    hook = BanditMixing(BanditConfig(update_every=4), ["a", "b"], [0.5, 0.5])
    data = FakePipeline([0.5, 0.5])
    for step in range(2, 13, 2):
        rows = [{"step": s, "train_loss/a": 3.0 - s / 10, "train_tokens/a": 10.0, "train_tokens/b": 0.0}
                for s in (step - 1, step)]
        hook.on_sync(step, rows, data)
        assert rows[-1]["weight/a"] == data.requested_shares[0] and "weight/b" in rows[-1]
    assert data.calls == [4, 8, 12]


def test_the_hook_refuses_to_resume_with_changed_settings():
    saved = BanditMixing(BanditConfig(learning_rate=1.0), ["a", "b"], [1, 1]).state()
    with pytest.raises(ConfigError, match="data.bandit.learning_rate changed"):
        BanditMixing(BanditConfig(learning_rate=2.0), ["a", "b"], [1, 1]).restore(saved)


def test_the_loss_split_by_source_adds_up_and_a_classification_row_counts_once_for_its_source():
    from jaxlm.compute.losses import source_terms

    nll = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)  # tokens of two packed rows
    weights = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
    ids = np.array([[0, 1, -1], [1, 1, 2]], np.int32)
    sums, counts = source_terms(nll, weights, ids, 3)
    np.testing.assert_allclose(sums, [1.0, 11.0, 6.0])
    np.testing.assert_allclose(counts, [1.0, 3.0, 1.0])
    assert float(sums.sum()) == float((nll * weights).sum())

    rows = np.array([0.5, 2.0], np.float32)  # classification: one loss per row, ids per token ([CLS] first)
    sums, counts = source_terms(rows, np.ones(2, np.float32), np.array([[2, 2, -1], [0, -1, -1]], np.int32), 3)
    np.testing.assert_allclose(sums, [2.0, 0.0, 0.5])
    np.testing.assert_allclose(counts, [1.0, 0.0, 1.0])
