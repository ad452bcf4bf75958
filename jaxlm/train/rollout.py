"""GRPO's rollout: a batch of prompt records in, a train batch of scored completions out (compute/grpo.py).

Each step, every prompt of the batch is answered `grpo.group_size` times by jaxlm's sampler (sampling/api.py:
prefill and a decode loop, compiled once: every prompt is padded to train.seq_len - grpo.max_new_tokens
positions) from the engine's current parameters, written into the model without a copy. The completions are
scored by the rewards (compute/rewards.py), their advantages normalised within each prompt's group, and the
log-probs that the ratio and the KL compare with are computed once here, in one jitted forward each: the
model as it sampled (old) and, with grpo.beta > 0, the starting model (LoRA: the adapters off). A string
prompt goes through the tokenizer's chat template as one user turn when there is one (as jaxlm's SFT renders
prompt/completion records); `messages` records are the conversation up to its last user turn. Prompts keep
their last train.seq_len - grpo.max_new_tokens tokens, so every train batch has one shape: [batch_size x
group_size, train.seq_len].

The sampling key of step s derives from (train.seed, s) alone: a resumed run samples what the uninterrupted
one sampled, with nothing to save. At evaluations (`Rollouts.evaluate`) the held-out prompt batches are
answered and scored the same way, with keys of their own, and no train batch is made.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.compute.grpo import group_advantages
from jaxlm.compute.losses import token_logps
from jaxlm.compute.rewards import Reward, score_all
from jaxlm.compute.step import cast_floats, starting_model
from jaxlm.sampling.api import encode_prompts, generate
from jaxlm.train.config import Config

EVAL_STREAM = 1 << 32  # in the held-out prompts' sampling keys: apart from any train step's (seed, step)


@dataclasses.dataclass
class Sampled:
    """One batch of prompts answered group_size times each and scored (rows in groups, prompt by prompt)."""

    records: list[dict]  # one per prompt
    prompt_ids: list[list[int]]  # one per completion
    token_ids: list[list[int]]
    texts: list[str]
    totals: list[float]  # the weighted reward of each completion
    by_name: dict[str, list[float]]  # each reward's scores
    seconds: float
    group_size: int

    def metrics(self) -> dict:
        lengths = [len(ids) for ids in self.token_ids]
        within_groups = np.std(np.reshape(self.totals, (-1, self.group_size)), axis=1, ddof=1)
        return {"reward_mean": float(np.mean(self.totals)), "reward_std": float(np.mean(within_groups)),  # TRL's
                "completion_length": float(np.mean(lengths)),
                "rollout_tokens_per_s": sum(lengths) / max(self.seconds, 1e-9), "rollout_seconds": self.seconds,
                **{f"rewards/{name}": float(np.mean(scores)) for name, scores in self.by_name.items()}}

    @staticmethod
    def merged(parts: list[Sampled], group_size: int) -> Sampled:
        joined = lambda name: [x for part in parts for x in getattr(part, name)]  # noqa: E731
        by_name = {name: [x for part in parts for x in part.by_name[name]] for name in parts[0].by_name}
        return Sampled(joined("records"), joined("prompt_ids"), joined("token_ids"), joined("texts"),
                       joined("totals"), by_name, sum(p.seconds for p in parts), group_size)


class Rollouts:
    """Samples and scores completions for the engine's current weights (see the module docstring)."""

    def __init__(self, cfg: Config, model, tokenizer, engine, wrt, rewards: list[Reward]):
        self.cfg, self.model, self.tokenizer, self.engine, self.rewards = cfg, model, tokenizer, engine, rewards
        self.chat = tokenizer.chat_template is not None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        model.eval()
        graphdef = nnx.split(model, wrt, nnx.Param, ...)[0]
        dtype = jnp.dtype(cfg.train.compute_dtype)
        temperature, chunk, beta = cfg.grpo.temperature, cfg.train.loss_chunk_tokens, cfg.grpo.beta

        def logps(params, frozen, rest, reference, batch):
            model = nnx.merge(graphdef, cast_floats(params, dtype), cast_floats(frozen, dtype), rest)
            old = token_logps(model, batch, temperature, chunk)
            if not beta:
                return old, jnp.zeros_like(old)
            start = starting_model(graphdef, params, reference, frozen, rest, dtype)
            return old, token_logps(start, batch, temperature, chunk)

        self._logps = jax.jit(logps)

    def prompt_ids(self, records: list[tuple[str, dict]]) -> list[list[int]]:
        prompts = [r["prompt"] if kind == "prompt" else _conversation(r["messages"]) for kind, r in records]
        keep = self.cfg.train.seq_len - self.cfg.grpo.max_new_tokens
        return [ids[-keep:] for ids in encode_prompts(self.tokenizer, prompts, chat=self.chat)]

    def batch(self, host_batch: dict, step: int) -> tuple[dict, dict]:
        """(train batch of numpy arrays, host metrics) for the prompt records of `host_batch` at `step`."""
        g = self.cfg.grpo
        self.engine.update_model(self.model)  # the current weights, the engine's own arrays: no copy
        sampled = self.sample(host_batch, [self.cfg.train.seed, step])
        batch = self._rows(sampled.prompt_ids, sampled.token_ids)
        batch["advantages"] = group_advantages(np.asarray(sampled.totals), g.group_size)
        state = self.engine.state
        old, ref = self._logps(state.params, self.engine.frozen, self.engine.rest, self.engine.reference,
                               {k: jnp.asarray(batch[k]) for k in ("input_ids", "targets", "attention_mask")})
        batch["old_logps"], batch["ref_logps"] = np.asarray(old), np.asarray(ref)
        return batch, sampled.metrics()

    def evaluate(self, host_batches: list[dict]) -> tuple[dict, list[Sampled]]:
        """({eval_reward_mean, eval_reward_std, eval_rewards/<name>, eval_completion_length}, what was sampled)
        for the held-out prompt batches, each sampled with a key of its own that every evaluation reuses (so
        two evaluations differ by the weights alone)."""
        self.engine.update_model(self.model)
        sampled = [self.sample(b, [self.cfg.train.seed, EVAL_STREAM, i]) for i, b in enumerate(host_batches)]
        merged = Sampled.merged(sampled, self.cfg.grpo.group_size)
        return {f"eval_{k}": v for k, v in merged.metrics().items() if not k.startswith("rollout_")}, sampled

    def sample(self, host_batch: dict, entropy: list[int]) -> Sampled:
        """The group_size completions of each prompt record of `host_batch`, scored; the sampler's key derives
        from `entropy`. A short batch (the last of a held-out split) is filled up to the train batch's size with
        copies of its first prompt, whose completions are dropped: one shape, one compiled program."""
        g, t = self.cfg.grpo, self.cfg.train
        records = [(item["kind"], item["data"]) for item in map(json.loads, host_batch["record"])]
        prompt_ids = [ids for ids in self.prompt_ids(records) for _ in range(g.group_size)]
        rows = len(prompt_ids)
        filled = prompt_ids + [prompt_ids[0]] * (t.batch_size * g.group_size - rows)
        began = time.perf_counter()
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        result = generate(self.model, self.tokenizer, filled, g.max_new_tokens, g.temperature,
                          top_p=g.top_p if g.top_p < 1 else None, seed=seed, batch_size=len(filled),
                          prompt_len=t.seq_len - g.max_new_tokens)  # one shape: compiled once
        seconds = time.perf_counter() - began
        assert result.texts is not None  # a tokenizer was given
        texts = result.texts[:rows]
        prompts = [data.get("prompt", data.get("messages")) for _, data in records for _ in range(g.group_size)]
        datas = [data for _, data in records for _ in range(g.group_size)]
        totals, by_name = score_all(self.rewards, prompts, texts, datas)
        return Sampled(datas[::g.group_size], prompt_ids, result.token_ids[:rows], texts, totals, by_name,
                       seconds, g.group_size)

    def _rows(self, prompt_ids: list[list[int]], completions: list[list[int]]) -> dict:
        """One prompt + completion per row from position 0, right-padded to train.seq_len; the targets are the
        tokens shifted by one, completion_mask 1 where a target is a completion token (its stop token too)."""
        seq = self.cfg.train.seq_len
        rows = {k: np.zeros((len(prompt_ids), seq), np.int32)
                for k in ("input_ids", "targets", "completion_mask", "attention_mask")}
        rows["input_ids"][:] = self.pad_id
        for r, (prompt, completion) in enumerate(zip(prompt_ids, completions, strict=True)):
            ids = prompt + completion
            length = len(ids) - 1
            rows["input_ids"][r, :length] = ids[:-1]
            rows["targets"][r, :length] = ids[1:]
            rows["completion_mask"][r, len(prompt) - 1:length] = 1
            rows["attention_mask"][r, :length] = 1
        return rows


def _conversation(messages: list[dict]) -> list[dict]:
    """The turns up to the last user turn: what the model answers (a trailing reference answer is dropped)."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1)
    return messages[:last_user + 1]
