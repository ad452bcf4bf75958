"""GRPO against TRL and by hand: the group advantages, each loss normalisation, its gradient and metrics as
TRL's own `GRPOTrainer._compute_loss` computes them on the same fixed log-probs."""

from __future__ import annotations

import dataclasses
import json
import shutil
import types
from collections import defaultdict
from pathlib import Path
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxlm.compute.grpo import Grpo, group_advantages, policy_terms
from jaxlm.compute.rewards import RewardError, build_rewards, score_all
from jaxlm.errors import ConfigError
from jaxlm.sampling import loop as sampler
from jaxlm.train.loop import train
from jaxlm.train.metrics import read_metrics
from train_helpers import WORDS, tiny_config, write_tiny_llama

TRL_LOSS_TYPES = {"sequence": "grpo", "token": "dapo", "constant": "dr_grpo"}


def test_advantages_are_normalised_within_each_group_by_hand_and_as_trl():
    from trl.trainer.utils import nanstd

    rewards = np.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.5, 1.5, 3.0, 0.0])
    advantages = group_advantages(rewards, group_size=4)
    # group 1: mean 0.5, sample std sqrt(1/3); group 2: equal rewards say nothing
    by_hand = np.array([0.5, -0.5, -0.5, 0.5]) / (np.sqrt(1 / 3) + 1e-4)
    np.testing.assert_allclose(advantages[:4], by_hand, rtol=1e-6)
    np.testing.assert_array_equal(advantages[4:8], 0.0)
    grouped = torch.tensor(rewards).view(-1, 4)
    trl = (grouped - grouped.mean(1, keepdim=True)) / (nanstd(grouped, dim=1).unsqueeze(1) + 1e-4)
    np.testing.assert_allclose(advantages, trl.reshape(-1).numpy(), rtol=1e-6)


def trl_compute_loss(loss_type: str, logps, old, ref, advantages, mask, *, epsilon: float, beta: float,
                     max_new_tokens: int):
    """TRL's `GRPOTrainer._compute_loss` on fixed per-token log-probs: (loss, d loss / d logps, its metrics).
    A trainer is heavy to build; the method reads only these attributes."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    per_token = torch.tensor(np.asarray(logps), requires_grad=True)
    trainer = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (per_token, torch.zeros_like(per_token), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        loss_type=loss_type, epsilon_low=epsilon, epsilon_high=epsilon, use_vllm=False,
        model=types.SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=max_new_tokens, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        accelerator=types.SimpleNamespace(num_processes=1, reduce=lambda t, reduction: t, gather=lambda t: t),
        _metrics={"train": defaultdict(list)})
    rows, length = per_token.shape
    mask_t = torch.tensor(np.asarray(mask))
    inputs = {"prompt_ids": torch.zeros(rows, 1, dtype=torch.long), "prompt_mask": torch.ones(rows, 1),
              "completion_ids": torch.zeros(rows, length, dtype=torch.long), "completion_mask": mask_t,
              "advantages": torch.tensor(np.asarray(advantages)), "old_per_token_logps": torch.tensor(np.asarray(old)),
              "ref_per_token_logps": torch.tensor(np.asarray(ref)), "num_items_in_batch": mask_t.sum()}
    loss = GRPOTrainer._compute_loss(cast(GRPOTrainer, trainer), None, inputs)
    loss.backward()
    assert per_token.grad is not None
    return loss.item(), per_token.grad.numpy(), {k: v[0] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("loss_norm", list(TRL_LOSS_TYPES))
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_gradient_and_metrics_are_trls(loss_norm, beta):
    rng = np.random.default_rng(0)
    rows, length, max_new = 6, 7, 8
    old = np.log(rng.uniform(0.05, 0.9, (rows, length)))
    logps = old + rng.normal(0, 0.3, (rows, length))  # ratios both inside and outside [1 - ε, 1 + ε]
    ref = old + rng.normal(0, 0.2, (rows, length))
    lengths = np.array([7, 3, 5, 1, 6, 2])
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.float64)
    advantages = rng.normal(0, 1, rows)
    objective = Grpo(epsilon=0.2, beta=beta, loss_norm=loss_norm, max_new_tokens=max_new)

    def loss(x):
        loss_sum, count, sums = policy_terms(objective, x, jnp.asarray(old, jnp.float32), jnp.asarray(ref, jnp.float32),
                                             jnp.asarray(advantages, jnp.float32), jnp.asarray(mask))
        return loss_sum / count, {k: v / count for k, v in sums.items()}

    (ours, metrics), grad = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(logps, jnp.float32))
    trl, trl_grad, trl_metrics = trl_compute_loss(TRL_LOSS_TYPES[loss_norm], logps, old, ref, advantages, mask,
                                                  epsilon=0.2, beta=beta, max_new_tokens=max_new)
    np.testing.assert_allclose(ours, trl, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, trl_grad, rtol=1e-4, atol=1e-7)
    assert 0 < float(metrics["clip_fraction"]) < 1
    np.testing.assert_allclose(metrics["clip_fraction"], trl_metrics["clip_ratio/region_mean"], rtol=1e-6)
    if beta:
        np.testing.assert_allclose(metrics["kl"], trl_metrics["kl"], rtol=1e-5)


def test_sequence_loss_by_hand_at_the_first_update():
    """Before any update the ratio is 1 and the model is the reference: the loss is -mean over completions of the
    advantage, whatever β."""
    logps = jnp.log(jnp.array([[0.5, 0.25, 0.1], [0.2, 0.3, 0.4]]))
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    advantages = jnp.array([1.5, -0.5])
    loss_sum, count, sums = policy_terms(Grpo(beta=0.04), logps, logps, logps, advantages, mask)
    assert float(count) == 2
    np.testing.assert_allclose(loss_sum / count, -(1.5 - 0.5) / 2, rtol=1e-6)
    assert float(sums["clip_fraction"]) == 0 and abs(float(sums["kl"])) < 1e-7
    assert "kl" not in policy_terms(Grpo(beta=0.0), logps, logps, logps, advantages, mask)[2]  # no reference


def rewards_of(*configs: dict):
    from jaxlm.train.config import RewardConfig

    return build_rewards([RewardConfig(**c) for c in configs])


def test_each_reward_type_scores_by_its_rule():
    record = {"answer": "Forty-Two"}
    cases = [  # (reward, completion, expected)
        ({"type": "regex", "pattern": r"^answer: \d+$"}, "answer: 42", 1.0),
        ({"type": "regex", "pattern": r"^answer: \d+$"}, "the answer: 42", 0.0),
        ({"type": "exact"}, "  forty-two\n", 1.0),  # case and spaces do not count
        ({"type": "exact"}, "forty-two!", 0.0),
        ({"type": "exact", "pattern": r"answer: (\S+)"}, "so the answer: FORTY-TWO because", 1.0),
        ({"type": "exact", "pattern": r"answer: (\S+)"}, "no idea", 0.0),
        ({"type": "contains"}, "I think it is forty-two.", 1.0),
        ({"type": "length", "max_words": 4}, "one two three", 1.0),
        ({"type": "length", "max_words": 4}, "one two three four five six seven eight", 0.5),
    ]
    for config, completion, expected in cases:
        (reward,) = rewards_of(config)
        assert reward.score("prompt", completion, record) == expected, (config, completion)


def test_rewards_are_weighted_and_named_once(tmp_path):
    code = tmp_path / "my_rewards.py"
    code.write_text("def shorter(prompt, completion, record):\n    return -len(completion) / 10\n")
    rewards = rewards_of({"type": "contains", "weight": 2.0}, {"type": "contains", "field": "other"},
                         {"type": "python", "function": f"{code}:shorter", "weight": 0.5})
    assert [r.name for r in rewards] == ["contains", "contains_2", "shorter"]
    totals, by_name = score_all(rewards, ["p", "p"], ["a b", "c"], [{"answer": "b", "other": "c"}] * 2)
    assert by_name == {"contains": [1.0, 0.0], "contains_2": [0.0, 1.0], "shorter": [-0.3, -0.1]}
    np.testing.assert_allclose(totals, [2.0 - 0.15, 1.0 - 0.05])


def test_a_python_reward_that_raises_is_named_by_its_file_and_line(tmp_path):
    code = tmp_path / "bad_reward.py"
    code.write_text("def score(prompt, completion, record):\n    return 1 / 0\n")
    (reward,) = rewards_of({"type": "python", "function": f"{code}:score"})
    with pytest.raises(RewardError, match=rf"raised ZeroDivisionError: division by zero \({code}:2\)"):
        reward.score("p", "c", {})
    with pytest.raises(RewardError, match="returned 'x'; a reward is a finite number"):
        score_all([dataclasses.replace(reward, score=lambda p, c, r: "x")], ["p"], ["c"], [{}])


def test_a_python_reward_with_the_wrong_signature_is_refused_when_built(tmp_path):
    code = tmp_path / "two_args.py"
    code.write_text("def score(completion, answer):\n    return 1.0\n")
    with pytest.raises(ConfigError, match=r"rewards\[0\].function=.*called as score\(prompt, completion, record\)"):
        rewards_of({"type": "python", "function": f"{code}:score"})
    with pytest.raises(ConfigError, match="defines no function 'missing'"):
        rewards_of({"type": "python", "function": f"{code}:missing"})


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A tiny BERT sequence classifier over labels TAG0, TAG1, TAG2 (as transformers writes it) and its model."""
    from hf_checkpoints import tiny_bert
    from train_helpers import bert_tokenizer

    folder = tmp_path_factory.mktemp("classifier")
    model = tiny_bert(folder, num_labels=3, head="sequence")
    tokenizer = bert_tokenizer(str(folder))
    tokenizer.save_pretrained(folder)
    return str(folder), model, tokenizer


def test_a_model_reward_is_the_classifiers_probability_of_its_label_as_transformers(tiny_classifier):
    folder, model, tokenizer = tiny_classifier
    completions = ["the cat sat on a mat", "hello", " ".join(WORDS[:40]), "good day to you bob"]  # 32 and 64 wide
    (default, chosen) = rewards_of({"type": "model", "path": folder}, {"type": "model", "path": folder,
                                                                        "label": "TAG0"})
    totals, by_name = score_all([default, chosen], ["p"] * 4, completions, [{}] * 4)
    with torch.no_grad():
        probabilities = model(**tokenizer(completions, padding=True, return_tensors="pt")).logits.softmax(-1)
    np.testing.assert_allclose(by_name["model"], probabilities[:, 2].numpy(), rtol=1e-4, atol=1e-6)  # the last
    np.testing.assert_allclose(by_name["model_2"], probabilities[:, 0].numpy(), rtol=1e-4, atol=1e-6)
    assert default.score("p", completions[1], {}) == pytest.approx(by_name["model"][1], abs=1e-6)


def test_a_model_reward_needs_a_classifier_and_one_of_its_labels(tiny_classifier, tmp_path):
    from hf_checkpoints import tiny_bert

    with pytest.raises(ConfigError, match=r"rewards\[0\].label='positive' is not a label of .* \['TAG0', 'TAG1'"):
        rewards_of({"type": "model", "path": tiny_classifier[0], "label": "positive"})
    tiny_bert(tmp_path / "encoder")  # no head
    with pytest.raises(ConfigError, match=r"rewards\[0\].path=.* holds a BertModel, not a sequence classifier"):
        rewards_of({"type": "model", "path": str(tmp_path / "encoder")})
    with pytest.raises(ConfigError, match=r"rewards\[0\].path=.*: no such classifier"):
        rewards_of({"type": "model", "path": str(tmp_path / "missing")})


VOWELS = ("def vowels(prompt, completion, record):\n"
          "    return sum(c in 'aeiou' for c in completion) / max(len(completion), 1)\n")


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, tiny_classifier):
    """A tiny Llama, GRPO on a dense toy reward (the share of vowels in the completion): 8 batches of 4 prompts
    x 8 completions, one update each, KL to the start with β = 0.04; a classifier's reward is logged beside it
    (weight 0: it does not move the policy)."""
    root = tmp_path_factory.mktemp("grpo")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"what is {w}", "answer": w}) + "\n"
                                                for w in WORDS))
    (root / "toy.py").write_text(VOWELS)
    cfg = tiny_config(root, write_tiny_llama(root / "llama"), "grpo", [str(root / "prompts.jsonl")],
                      f"grpo.rewards=[{{type: python, function: '{root}/toy.py:vowels'}}, "
                      f"{{type: model, path: '{tiny_classifier[0]}', weight: 0}}]", "grpo.group_size=8",
                      "grpo.max_new_tokens=8", "grpo.beta=0.04", "train.steps=8",
                      "train.log_every=2", "checkpoint.every=4", "train.warmup_steps=0", "eval.general_prompts=false",
                      "eval.steps=1", "eval.sample_prompts=2")
    compiled = sampler.STATS.compiles
    result = train(cfg, progress=False)
    rows = read_metrics(str(root / "run" / "metrics.jsonl"))
    return {"cfg": cfg, "root": root, "result": result, "rows": rows,
            "sampler_compiles": sampler.STATS.compiles - compiled}


def test_the_mean_reward_rises_on_a_toy_reward_and_every_step_is_logged(grpo_run):
    rows = {r["step"]: r for r in grpo_run["rows"] if "loss" in r}
    assert sorted(rows) == list(range(1, 9))
    rollouts = [rows[s] for s in rows]
    for row in rollouts:
        assert {"reward_mean", "reward_std", "rewards/vowels", "completion_length", "rollout_tokens_per_s"} <= set(row)
        assert row["reward_mean"] == row["rewards/vowels"] and 0 < row["completion_length"] <= 8
        assert 0 < row["rewards/model"] < 1
    first, last = (np.mean([r["reward_mean"] for r in part]) for part in (rollouts[:2], rollouts[-2:]))
    assert last > first + 0.05, [r["reward_mean"] for r in rollouts]
    assert rows[1]["kl"] == pytest.approx(0, abs=1e-6) and rows[8]["kl"] > 0  # the model leaves its start
    # one update per batch, on the policy that sampled it: the ratio is 1, nothing is clipped
    assert all(rows[s]["clip_fraction"] == 0 for s in rows)
    assert (grpo_run["root"] / "run" / "rewards.png").exists()
    assert grpo_run["sampler_compiles"] == 2  # one prefill and one decode program for every rollout


def test_held_out_prompts_are_scored_at_each_evaluation_and_their_completions_kept_in_samples_md(grpo_run):
    evals = {r["step"]: r for r in grpo_run["rows"] if "eval_reward_mean" in r}
    assert sorted(evals) == [0, 4, 8]  # before training, every eval.every steps, at the end
    for row in evals.values():
        assert 0 < row["eval_reward_mean"] == row["eval_rewards/vowels"] < 1 and 0 < row["eval_rewards/model"] < 1
        assert 0 < row["eval_completion_length"] <= 8 and row["eval_reward_std"] >= 0
    markdown = (grpo_run["root"] / "run" / "samples.md").read_text()
    sections = markdown.split("## Step ")[1:]
    assert [s.split("\n")[0] for s in sections] == ["0", "4", "8"]
    for section, step in zip(sections, (0, 4, 8), strict=True):
        assert f"Mean reward {evals[step]['eval_reward_mean']:.3f} (vowels " in section
        assert section.count("### what is ") == 2 and section.count("- reward ") == 2 * 8  # 2 prompts x group


def test_a_run_resumed_from_its_checkpoint_ends_with_the_same_weights(grpo_run):
    """The sampler's key derives from (seed, step): a run stopped after step 4 and rerun samples the same
    completions and ends bitwise where the uninterrupted run ended."""
    from flax import nnx

    again = grpo_run["root"] / "again"
    shutil.copytree(grpo_run["root"] / "run", again)
    shutil.rmtree(again / "checkpoints" / "8")  # as if killed before the last save
    resumed = train(dataclasses.replace(grpo_run["cfg"], output_dir=str(again)), progress=False)
    ours, theirs = (nnx.state(r.model, nnx.Param) for r in (resumed, grpo_run["result"]))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(a, b)
    rows = read_metrics(str(again / "metrics.jsonl"))
    sampled = lambda rows: [(r["step"], r["reward_mean"]) for r in rows if "reward_mean" in r]  # noqa: E731
    assert sampled(rows) == sampled(grpo_run["rows"])
    at_end = lambda rows: [r["eval_reward_mean"] for r in rows if r["step"] == 8 and "eval_reward_mean" in r]  # noqa: E731
    assert at_end(rows) == at_end(grpo_run["rows"])  # the same weights and keys: the same held-out completions


@pytest.mark.parametrize(("override", "says"), [
    ("grpo.temperature=0", "grpo.temperature must be > 0, got 0"),
    ("grpo.top_p=1.5", "grpo.top_p must be in (0, 1], got 1.5"),
    ("grpo.epsilon=0", "grpo.epsilon must be > 0, got 0"),
    ("grpo.beta=-1", "grpo.beta must be >= 0, got -1"),
    ("grpo.iterations=0", "grpo.iterations must be >= 1, got 0"),
    ("grpo.loss_norm=mean", "grpo.loss_norm='mean' is not one of sequence, token, constant"),
    ("grpo.rewards=[{type: regex}]", "grpo.rewards[0].pattern is empty"),
    ("grpo.rewards=[{type: exact, pattern: '('}]", "grpo.rewards[0].pattern='(' is not a valid regex"),
    ("grpo.rewards=[{type: length}]", "grpo.rewards[0].max_words must be >= 1"),
    ("grpo.rewards=[{type: python}]", "grpo.rewards[0].function is empty"),
    ("grpo.rewards=[{type: model}]", "grpo.rewards[0].path is empty"),
    ("grpo.rewards=[{type: contains, weight: .nan}]", "grpo.rewards[0].weight must be a finite number"),
    ("data.mixing=bandit", "task grpo learns from rewards: use data.mixing=static or temperature"),
])
def test_each_grpo_key_is_checked_before_any_work(override, says):
    """The config's own checks (the CLI rows of tests/test_bad_inputs.py show they reach the user as one line)."""
    from jaxlm.train.config import load_config

    rewards = "grpo.rewards=[{type: contains}]"
    with pytest.raises(ConfigError) as error:
        load_config(None, ["task=grpo", "grpo.max_new_tokens=8", rewards, "data.train=[x.jsonl]", override])
    assert says in str(error.value)


def test_the_mesh_splits_completions_not_prompts():
    """2 prompts x 2 completions fill 4 devices (measured: the same first-step loss and gradient norm as one)."""
    from jaxlm.compute.sharding import check_micro_batch

    check_micro_batch(2, 1, 4, group_size=2)
    with pytest.raises(ConfigError, match=r"train.batch_size x grpo.group_size=3 / train.grad_accum = 6 sequences "
                                          "per micro-batch must be divisible by the 4 devices"):
        check_micro_batch(2, 1, 4, group_size=3)


def test_grpo_logs_every_step_whatever_log_every():
    """A rollout waits for the host each step anyway, and a CPU step can take minutes: a run killed at step 4
    of the preset had kept no metrics (train.log_every=5)."""
    from jaxlm.train.config import load_config
    from jaxlm.train.loop import due_after

    cfg = load_config(str(Path(__file__).parents[1] / "configs" / "grpo_arithmetic.yaml"), ["train.log_every=5"])
    assert all(due_after(cfg, step, can_eval=False).log for step in range(1, 5))
