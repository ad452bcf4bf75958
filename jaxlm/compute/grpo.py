"""GRPO's objective on sampled completions, as TRL 1.16's `GRPOTrainer` computes it, with its metric names.

Each prompt is answered `group_size` times; a completion's advantage is its reward minus its group's mean,
divided by the group's standard deviation (Bessel-corrected, + 1e-4 as TRL). Per completion token, with
r = π(token) / π_old(token) against the log-probs kept from the rollout:

    loss = -min(r A, clip(r, 1 - ε, 1 + ε) A) + β KL,   KL = exp(ref - logp) - (ref - logp) - 1

(the k3 estimator of KL(π || π_ref), TRL's). The token losses are reduced by `loss_norm`:

* sequence (GRPO, TRL's loss_type grpo): the mean over each completion's tokens, then over completions;
* token (DAPO): the mean over all completion tokens of the batch;
* constant (Dr. GRPO): the sum over tokens divided by completions x max_new_tokens, a length-free constant.

Like the other objectives the loss comes back as a sum and a count whose quotient is the batch loss, so
gradient accumulation and data parallelism reduce as one batch. `kl` and `clip_fraction` (the share of
completion tokens whose ratio the clip holds: TRL's clip_ratio/region_mean) are token means, scaled by the
count so that the step's division by it gives them back; kl only where beta > 0, as TRL.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

LOSS_NORMS = ("sequence", "token", "constant")
METRICS = ("kl", "clip_fraction")
# A batch of completions, each [completions, seq] (one prompt + completion per row from position 0) but
# advantages [completions]; old_logps and ref_logps are the rollout's per-token log-probs (ref: zeros when beta=0).
BATCH_KEYS = ("input_ids", "targets", "completion_mask", "attention_mask", "old_logps", "ref_logps", "advantages")
FLOAT_KEYS = ("old_logps", "ref_logps", "advantages")


@dataclasses.dataclass(frozen=True)
class Grpo:
    """GRPO's constants (see the module docstring); `temperature` scales the logits of every log-prob, as
    the sampler scaled them (TRL does the same)."""

    epsilon: float = 0.2
    beta: float = 0.0
    loss_norm: str = "sequence"
    max_new_tokens: int = 64
    temperature: float = 1.0

    @property
    def metric_names(self) -> tuple[str, ...]:
        return METRICS if self.beta else METRICS[1:]  # no reference, no kl (TRL logs none either)

    @property
    def needs_reference(self) -> bool:  # the step's own reference pass: no, the rollout keeps ref_logps
        return False


def group_advantages(rewards: np.ndarray, group_size: int) -> np.ndarray:
    """[prompts x group_size] rewards (each prompt's group together) -> advantages normalised within groups.
    A group whose rewards are all equal gets advantages 0: it says nothing about which answer is better."""
    grouped = np.asarray(rewards, np.float64).reshape(-1, group_size)
    centred = grouped - grouped.mean(axis=1, keepdims=True)
    std = grouped.std(axis=1, ddof=1, keepdims=True) if group_size > 1 else np.zeros_like(centred)
    return (centred / (std + 1e-4)).reshape(-1).astype(np.float32)


def policy_terms(objective: Grpo, logps, old_logps, ref_logps, advantages, mask) -> tuple[jax.Array, jax.Array, dict]:
    """(loss sum, count, {metric: value x count}) of completions: logps, old_logps, ref_logps and mask are
    [rows, seq] (mask 1 on completion tokens), advantages [rows]. `ref_logps` is ignored when beta is 0."""
    eps, beta = objective.epsilon, objective.beta
    mask = mask.astype(jnp.float32)
    ratio = jnp.exp(logps - old_logps)
    advantage = advantages[:, None]
    per_token = -jnp.minimum(ratio * advantage, jnp.clip(ratio, 1 - eps, 1 + eps) * advantage)
    log_ref_ratio = ref_logps - logps
    kl = jnp.exp(log_ref_ratio) - log_ref_ratio - 1
    if beta:
        per_token = per_token + beta * kl
    tokens = jnp.sum(mask, -1)
    rows = jnp.asarray(mask.shape[0], jnp.float32)
    if objective.loss_norm == "sequence":
        loss_sum, count = jnp.sum(jnp.sum(per_token * mask, -1) / jnp.maximum(tokens, 1.0)), rows
    elif objective.loss_norm == "token":
        loss_sum, count = jnp.sum(per_token * mask), jnp.sum(tokens)
    elif objective.loss_norm == "constant":
        loss_sum, count = jnp.sum(per_token * mask) / objective.max_new_tokens, rows
    else:
        raise ValueError(f"grpo loss_norm {objective.loss_norm!r} is not one of {LOSS_NORMS}")
    clipped = ((ratio < 1 - eps) & (advantage < 0)) | ((ratio > 1 + eps) & (advantage > 0))
    token_mean = lambda x: jnp.sum(jax.lax.stop_gradient(x) * mask) / jnp.maximum(jnp.sum(tokens), 1.0)  # noqa: E731
    sums = {"clip_fraction": token_mean(clipped.astype(jnp.float32)) * count}
    if beta:
        sums["kl"] = token_mean(kl) * count
    return loss_sum, count, sums
