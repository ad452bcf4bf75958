"""Preference objectives on {prompt, chosen, rejected} pairs, as TRL 1.16 computes them, with its metric names.

* dpo (`DPOTrainer`): Δ = (log π(chosen) - log π_ref(chosen)) - (log π(rejected) - log π_ref(rejected)),
  log-probs summed over the completion tokens. `sigmoid`: -log σ(βΔ), with `label_smoothing` ε the
  conservative form -(1-ε) log σ(βΔ) - ε log σ(-βΔ) (TRL's CPO/older DPO sigmoid); `robust`: TRL's robust
  DPO; `hinge`: relu(1 - βΔ); `ipo`: ((Δ_chosen / |chosen| - Δ_rejected / |rejected|) - 1/(2β))², the log
  ratios averaged per completion token as TRL does. Rewards: β (log π - log π_ref).
* orpo (`ORPOTrainer`): the chosen completions' mean token NLL minus β log σ(log-odds of the average
  token log-probs); rewards β x average log-prob.
* simpo (`CPOTrainer`, loss_type simpo): -log σ(β (avg chosen - avg rejected) - γ), on average token
  log-probs; rewards β x average log-prob.

A batch holds pairs: every array is [pairs, 2, seq] (chosen first), one sequence per row from position 0
(data/preference.py). Chosen and rejected go through one forward as [2 x pairs, seq] (`losses.completion_logps`:
summed completion log-probs, the vocabulary projected a chunk of positions at a time). A loss comes back as a
sum over pairs and a pair count, like the token losses, so accumulation and data parallelism reduce as one
batch; a pair without completion tokens on both sides (padding) counts for nothing. The metrics come back
as sums over pairs too, divided by the count where they are logged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

DPO_LOSSES = ("sigmoid", "robust", "hinge", "ipo")
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")
ORPO_METRICS = ("nll_loss", "log_odds_ratio", "log_odds_chosen")


@dataclasses.dataclass(frozen=True)
class Preference:
    """A preference objective and its constants (see the module docstring)."""

    task: str  # dpo | orpo | simpo
    beta: float
    loss: str = "sigmoid"  # dpo: one of DPO_LOSSES
    label_smoothing: float = 0.0  # dpo sigmoid and robust
    gamma: float = 0.0  # simpo's target margin

    @property
    def needs_reference(self) -> bool:
        return self.task == "dpo"

    @property
    def metric_names(self) -> tuple[str, ...]:
        return (*METRICS, *ORPO_METRICS) if self.task == "orpo" else METRICS


def pair_terms(objective: Preference, logps, tokens, reference_logps=None) -> tuple[jax.Array, jax.Array, dict]:
    """(loss summed over pairs, pair count, {metric: sum over pairs}) from `completion_logps`' outputs
    (and the reference model's log-probs for dpo)."""
    beta, smoothing = objective.beta, objective.label_smoothing
    chosen, rejected = logps[:, 0], logps[:, 1]
    n_chosen, n_rejected = tokens[:, 0], tokens[:, 1]
    weight = ((n_chosen > 0) & (n_rejected > 0)).astype(logps.dtype)
    sums = {}
    if objective.task == "dpo":
        assert reference_logps is not None, "dpo needs the reference model's log-probs"
        chosen_ratio, rejected_ratio = chosen - reference_logps[:, 0], rejected - reference_logps[:, 1]
        losses = _dpo_losses(objective, chosen_ratio, rejected_ratio, n_chosen, n_rejected)
        reward_chosen, reward_rejected = beta * chosen_ratio, beta * rejected_ratio
    else:
        # padding pairs get a harmless -1: log(1 - exp(0)) would be NaN, and NaN * 0 is NaN
        average_chosen = jnp.where(weight > 0, chosen / jnp.maximum(n_chosen, 1.0), -1.0)
        average_rejected = jnp.where(weight > 0, rejected / jnp.maximum(n_rejected, 1.0), -1.0)
        reward_chosen, reward_rejected = beta * average_chosen, beta * average_rejected
        if objective.task == "simpo":
            z = beta * (average_chosen - average_rejected) - objective.gamma
            losses = -(1 - smoothing) * jax.nn.log_sigmoid(z) - smoothing * jax.nn.log_sigmoid(-z)
        else:  # orpo: the odds ratio term per pair, plus the chosen completions' mean token NLL of the batch
            log_odds = (average_chosen - average_rejected) - (_log1mexp(average_chosen) - _log1mexp(average_rejected))
            ratio = jax.nn.log_sigmoid(log_odds)
            count = jnp.sum(weight)
            nll = -jnp.sum(chosen * weight) / jnp.maximum(jnp.sum(n_chosen * weight), 1.0)
            losses = -beta * ratio + nll
            sums = {"nll_loss": nll * count, "log_odds_ratio": jnp.sum(ratio * weight),
                    "log_odds_chosen": jnp.sum(log_odds * weight)}
    per_pair = {"rewards/chosen": reward_chosen, "rewards/rejected": reward_rejected,
                "rewards/accuracies": (reward_chosen > reward_rejected).astype(logps.dtype),
                "rewards/margins": reward_chosen - reward_rejected, "logps/chosen": chosen, "logps/rejected": rejected}
    sums.update({k: jnp.sum(jax.lax.stop_gradient(v) * weight) for k, v in per_pair.items()})
    return jnp.sum(jnp.where(weight > 0, losses, 0.0)), jnp.sum(weight), sums


def _dpo_losses(objective: Preference, chosen_ratio, rejected_ratio, n_chosen, n_rejected):
    beta, smoothing = objective.beta, objective.label_smoothing
    z = beta * (chosen_ratio - rejected_ratio)
    if objective.loss == "sigmoid":
        return -(1 - smoothing) * jax.nn.log_sigmoid(z) - smoothing * jax.nn.log_sigmoid(-z)
    if objective.loss == "robust":
        return (-(1 - smoothing) * jax.nn.log_sigmoid(z) + smoothing * jax.nn.log_sigmoid(-z)) / (1 - 2 * smoothing)
    if objective.loss == "hinge":
        return jax.nn.relu(1 - z)
    if objective.loss == "ipo":
        delta = chosen_ratio / jnp.maximum(n_chosen, 1.0) - rejected_ratio / jnp.maximum(n_rejected, 1.0)
        return (delta - 1 / (2 * beta)) ** 2
    raise ValueError(f"dpo loss {objective.loss!r} is not one of {DPO_LOSSES}")


def _log1mexp(x):
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (TRL's `log1mexp`)."""
    return jnp.where(x < -0.6931471805599453, jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))
