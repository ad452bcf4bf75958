"""Learned data mixing (``data.mixing=bandit``): an EXP3 policy over the training sources.

Online Data Mixing (Albalak et al., 2023) treats each source as an arm of a multi-armed bandit
and samples sources by exponential weights (EXP3), with a probability floor so that every source
keeps being seen. Here, every ``update_every`` steps:

    mean_i   training loss on source i's tokens over the interval (NaN if no row came from i)
    r_i      reward: ``progress`` = base_i - mean_i, how far the loss fell below its recent level
             (learning progress, Graves et al. 2017), with base_i <- smoothing · base_i
             + (1 - smoothing) · mean_i after each update; ``loss`` = mean_i (ODM's reward)
    R_i      <- smoothing · R_i + (1 - smoothing) · r_i / scale        (sources seen this interval)
    p_i      = floor + (1 - K · floor) · softmax(log prior_i + learning_rate · R_i)

Comparing with a moving average rather than with the last interval keeps the reward's noise near
that of one interval's mean while a steady fall of d per interval shows as about d / (1 - smoothing).
``scale`` is a running mean of |r|, so one learning rate suits both rewards. A batch mixes sources
row by row, so every source drawn in an interval reveals its loss: the update uses each one's mean
directly (EXP3's full-information case, as ODM does with mixed minibatches) instead of
importance-weighting one sampled arm's reward by 1/p_i, which would only add variance. Sources
not drawn keep their estimate.

Why ``progress`` is the default: a source whose loss is high because it cannot be learned (noise,
garbled or mislabelled text) has the HIGHEST loss of all, so ODM's loss reward moves weight
towards it; its loss stops falling early, so learning progress moves weight away from it.

:class:`BanditMixing` is the training loop's hook (`jaxlm.train.run.SyncHook`): it reads the
per-source losses of each sync point's rows, updates the policy, hands the new weights to the
pipeline from the next batch on, and logs ``weight/<source>``. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxlm.data.config import BanditConfig
from jaxlm.errors import ConfigError


class Exp3:
    """Exponential weights with a floor over ``len(prior)`` arms; see the module docstring."""

    def __init__(self, config: BanditConfig, prior):
        prior = np.asarray(prior, np.float64)
        self.config = config
        with np.errstate(divide="ignore"):  # a zero prior weight keeps only the floor
            self.log_prior = np.log(prior / prior.sum())
        arms = len(prior)
        self.estimate = np.zeros(arms)  # R: smoothed, scaled rewards
        self.base = np.full(arms, np.nan)  # each arm's recent loss level (moving average); NaN: never seen
        self.scale = 0.0  # running mean of |reward|
        self.updates = 0

    def probabilities(self) -> np.ndarray:
        logits = self.log_prior + self.config.learning_rate * self.estimate
        p = np.exp(logits - logits.max())
        floor = self.config.floor
        return floor + (1.0 - len(p) * floor) * p / p.sum()

    def update(self, mean_loss) -> np.ndarray:
        """One interval's mean training loss per arm (NaN: not drawn) -> the new probabilities."""
        mean_loss = np.asarray(mean_loss, np.float64)
        seen = np.isfinite(mean_loss)
        s = self.config.smoothing
        if self.config.reward == "loss":
            reward, rewarded = mean_loss, seen
        else:
            rewarded = seen & np.isfinite(self.base)
            reward = np.where(rewarded, self.base - mean_loss, 0.0)
        if rewarded.any():
            magnitude = float(np.mean(np.abs(reward[rewarded])))
            self.scale = magnitude if self.scale == 0 else s * self.scale + (1 - s) * magnitude
            if self.scale > 0:
                self.estimate[rewarded] = s * self.estimate[rewarded] + (1 - s) * reward[rewarded] / self.scale
        first = seen & ~np.isfinite(self.base)
        self.base[first] = mean_loss[first]
        self.base[seen] = s * self.base[seen] + (1 - s) * mean_loss[seen]
        self.updates += 1
        return self.probabilities()

    def state(self) -> dict:
        return {"estimate": self.estimate.tolist(), "base": [None if np.isnan(v) else float(v) for v in self.base],
                "scale": self.scale, "updates": self.updates}

    def restore(self, state: dict) -> None:
        self.estimate = np.asarray(state["estimate"], np.float64)
        self.base = np.asarray([np.nan if v is None else v for v in state["base"]], np.float64)
        self.scale, self.updates = float(state["scale"]), int(state["updates"])


class BanditMixing:
    """The `SyncHook` that learns the mixture: per-source losses in, pipeline weights out."""

    name = "mixing"

    def __init__(self, config: BanditConfig, source_names: list[str], prior):
        self.config, self.source_names = config, list(source_names)
        self.policy = Exp3(config, prior)
        self.loss_sums = np.zeros(len(self.source_names))  # over the steps since the last update
        self.tokens = np.zeros(len(self.source_names))

    def on_sync(self, step: int, rows: list[dict], data) -> None:
        for row in rows:
            for i, name in enumerate(self.source_names):
                tokens = row.get(f"train_tokens/{name}", 0.0)
                if tokens > 0:
                    self.loss_sums[i] += row[f"train_loss/{name}"] * tokens
                    self.tokens[i] += tokens
        if step % self.config.update_every == 0:
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(self.tokens > 0, self.loss_sums / self.tokens, np.nan)
            data.set_weights(self.policy.update(mean), from_batch=step)  # the batch of step + 1
            self.loss_sums[:], self.tokens[:] = 0.0, 0.0
        rows[-1].update({f"weight/{name}": float(w)
                         for name, w in zip(self.source_names, data.requested_shares, strict=False)})

    def state(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "sources": self.source_names,
                "policy": self.policy.state(), "loss_sums": self.loss_sums.tolist(), "tokens": self.tokens.tolist()}

    def restore(self, state: dict) -> None:
        saved = {"config": state["config"], "sources": state["sources"]}
        now = {"config": dataclasses.asdict(self.config), "sources": self.source_names}
        if saved != now:
            changed = [k for k in saved["config"] if saved["config"][k] != now["config"].get(k)]
            what = ", ".join(f"data.bandit.{k}" for k in changed) or "data.train"
            raise ConfigError(f"cannot resume: {what} changed since the checkpoint was saved; "
                              "restore it, or start in a new output_dir")
        self.policy.restore(state["policy"])
        self.loss_sums = np.asarray(state["loss_sums"], np.float64)
        self.tokens = np.asarray(state["tokens"], np.float64)
