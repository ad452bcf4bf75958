"""Preference tuning (dpo, orpo, simpo) against TRL and transformers: the records tokenized as TRL's DPOTrainer
tokenizes them, the completion log-probs as transformers computes them, each loss and metric as TRL's own code
computes it on the same log-probs, the LoRA reference as the base model bitwise, and a run end to end."""

from __future__ import annotations

import json
import math
import types
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxlm.compute.losses import completion_logps
from jaxlm.compute.preference import Preference, pair_terms
from jaxlm.data.pipeline import build_pipeline
from jaxlm.data.preference import PreferenceEncoder
from jaxlm.data.records import DataError
from jaxlm.train.__main__ import main
from train_helpers import WORDS, llama_tokenizer, write_tiny_llama

SEQ_LEN = 32


def pairs(n: int = 24) -> list[dict]:
    """Both of TRL's forms: standard (strings) on odd rows, conversational (message lists) on even ones."""
    rows = []
    for i in range(n):
        word, other = WORDS[i % len(WORDS)], WORDS[(i + 5) % len(WORDS)]
        if i % 2:
            rows.append({"prompt": f"what is {word}", "chosen": f" my name is {word}", "rejected": f" the {other}"})
        else:
            rows.append({"prompt": [{"role": "user", "content": f"hello {word}"}],
                         "chosen": [{"role": "assistant", "content": f"hi there {word}"}],
                         "rejected": [{"role": "assistant", "content": f"rain {other} sun"}]})
    return rows


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("preference")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs()))
    return {"root": root, "llama": write_tiny_llama(root / "llama"), "pairs": str(data)}


def trl_token_ids(tokenizer, rows: list[dict]) -> list[dict]:
    """TRL's own `DPOTrainer._prepare_dataset` (EOS, chat template, tokenization, the prompt/completion split)."""
    from datasets import Dataset
    from trl import DPOTrainer

    trainer = types.SimpleNamespace(_tokenizer=tokenizer)
    args = types.SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start")
    out = []
    for row in rows:  # one at a time: a datasets.Dataset holds one form
        out.append(DPOTrainer._prepare_dataset(trainer, Dataset.from_list([row]), tokenizer, args, "train")[0])
    return out


def test_pairs_are_tokenized_as_trl_tokenizes_them_and_scored_as_transformers_scores_them(files):
    """The ids and completion of each sequence are TRL's; the summed completion log-probs are transformers'."""
    from transformers import AutoModelForCausalLM

    import jaxlm

    tokenizer, rows = llama_tokenizer(), pairs(4)
    batch = PreferenceEncoder(tokenizer, seq_len=SEQ_LEN).encode([("preference", r) for r in rows])
    model, _ = jaxlm.load_pretrained(files["llama"])
    arrays = {k: jnp.asarray(v) for k, v in batch.items()}
    ours, tokens = jax.jit(completion_logps)(model, arrays)
    # the vocabulary projected 8 positions of all 8 rows at a time: the same sums
    chunked, _ = jax.jit(lambda m, b: completion_logps(m, b, chunk_tokens=64))(model, arrays)
    np.testing.assert_allclose(chunked, ours, rtol=1e-6)
    reference = AutoModelForCausalLM.from_pretrained(files["llama"], dtype=torch.float32).eval()
    for r, trl in enumerate(trl_token_ids(tokenizer, rows)):
        for side, completion in enumerate((trl["chosen_ids"], trl["rejected_ids"])):
            length = int(batch["attention_mask"][r, side].sum())
            ids = [*batch["input_ids"][r, side, :length], batch["targets"][r, side, length - 1]]
            assert ids == trl["prompt_ids"] + completion
            completion_targets = batch["targets"][r, side][batch["completion_mask"][r, side] == 1]
            assert completion_targets.tolist() == completion  # the loss reads the completion, EOS included
            with torch.no_grad():
                logps = torch.log_softmax(reference(torch.tensor([ids])).logits[0, :-1].float(), -1)
            token_logps = logps.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
            assert tokens[r, side] == len(completion)
            expected = token_logps[len(trl["prompt_ids"]) - 1:].sum().item()
            np.testing.assert_allclose(float(ours[r, side]), expected, rtol=1e-5, atol=1e-4)


# --- the losses against TRL's own code ----------------------------------------------------------------------


def _trl_dpo(objective: Preference, logps, tokens, ref):
    """(loss, metrics) from TRL's `DPOTrainer._compute_loss` itself, fed the same log-probs: reference log-probs
    precomputed, and a stand-in model whose per-token log-probs put each row's sum on its first token."""
    from trl import DPOTrainer

    n = logps.shape[0]
    width = int(tokens.max()) + 2
    completion = torch.zeros(2 * n, width, dtype=torch.long)
    for row, count in enumerate(np.concatenate([tokens[:, 0], tokens[:, 1]])):
        completion[row, 1:1 + int(count)] = 1  # a one-token prompt, then the completion
    per_token = torch.zeros(2 * n, width - 1, dtype=torch.float64)
    per_token[:, 0] = torch.tensor(np.concatenate([logps[:, 0], logps[:, 1]]))
    outputs = types.SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                                    mean_logits=torch.zeros_like(per_token), is_top1=torch.zeros_like(per_token).bool())
    same = lambda x: x  # noqa: E731  one process: gathering changes nothing
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True), accelerator=types.SimpleNamespace(device="cpu", gather=same,
                                                                                      gather_for_metrics=same),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[objective.loss], loss_weights=[1.0], beta=objective.beta, label_smoothing=objective.label_smoothing,
        use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.ones(2 * n, width, dtype=torch.long), "attention_mask": torch.ones(2 * n, width),
              "completion_mask": completion, "ref_chosen_logps": torch.tensor(ref[:, 0]),
              "ref_rejected_logps": torch.tensor(ref[:, 1])}
    loss = DPOTrainer._compute_loss(trainer, lambda **kwargs: outputs, inputs, return_outputs=False)
    return float(loss), {k: v[0] for k, v in trainer._metrics["train"].items()}


def _trl_cpo(objective: Preference, chosen, rejected, loss_type):
    """TRL's `CPOTrainer.cpo_loss` (the sigmoid loss with label smoothing, or SimPO) on the given log-probs."""
    from trl.experimental.cpo import CPOTrainer

    trainer = types.SimpleNamespace(alpha=0.0, loss_type=loss_type, beta=objective.beta, simpo_gamma=objective.gamma,
                                    label_smoothing=objective.label_smoothing,
                                    accelerator=types.SimpleNamespace(device="cpu"))
    losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(trainer, *map(torch.tensor, (chosen, rejected)))
    return losses.mean().item(), chosen_rewards.numpy(), rejected_rewards.numpy()


def _trl_orpo(objective: Preference, chosen, rejected):
    from trl.experimental.orpo import ORPOTrainer

    trainer = types.SimpleNamespace(beta=objective.beta, accelerator=types.SimpleNamespace(device="cpu"))
    return ORPOTrainer.odds_ratio_loss(trainer, torch.tensor(chosen), torch.tensor(rejected))


def _reward_metrics(chosen_rewards, rejected_rewards, logps) -> dict:
    return {"rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "logps/chosen": logps[:, 0].mean(), "logps/rejected": logps[:, 1].mean()}


OBJECTIVES = {
    "dpo sigmoid": Preference("dpo", 0.1),
    "dpo sigmoid, label smoothing (conservative DPO)": Preference("dpo", 0.5, "sigmoid", 0.1),
    "dpo robust": Preference("dpo", 0.2, "robust", 0.1),
    "dpo hinge": Preference("dpo", 0.1, "hinge"),
    "dpo ipo": Preference("dpo", 0.1, "ipo"),
    "orpo": Preference("orpo", 0.1),
    "simpo": Preference("simpo", 2.0, gamma=0.5),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_each_loss_and_its_metrics_equal_trls(name):
    objective = OBJECTIVES[name]
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 12, size=(6, 2)).astype(np.float64)
    logps = -rng.uniform(0.2, 3.0, size=(6, 2)) * tokens
    ref = logps + rng.normal(0, 2.0, size=(6, 2))
    padded = [jnp.asarray(np.concatenate([x, np.zeros((1, 2))])) for x in (logps, tokens, ref)]  # a padding pair
    with jax.enable_x64():
        loss_sum, count, sums = pair_terms(objective, *padded)
        loss, ours = float(loss_sum / count), {k: float(v / count) for k, v in sums.items()}
    assert count == len(logps)  # the padding pair counts for nothing
    average = logps / tokens
    if objective.task == "dpo" and objective.loss == "sigmoid" and objective.label_smoothing:
        # TRL 1.16's DPO sigmoid has no label smoothing; its CPO sigmoid is conservative DPO on the log ratios
        expected, chosen_rewards, rejected_rewards = _trl_cpo(objective, logps[:, 0] - ref[:, 0],
                                                              logps[:, 1] - ref[:, 1], "sigmoid")
        metrics = _reward_metrics(chosen_rewards, rejected_rewards, logps)
    elif objective.task == "dpo":
        expected, metrics = _trl_dpo(objective, logps, tokens, ref)
    elif objective.task == "simpo":
        expected, chosen_rewards, rejected_rewards = _trl_cpo(objective, average[:, 0], average[:, 1], "simpo")
        metrics = _reward_metrics(chosen_rewards, rejected_rewards, logps)
    else:  # orpo: TRL's loss is the chosen completions' mean token NLL minus its odds-ratio term's mean
        losses, chosen_rewards, rejected_rewards, ratio, log_odds = _trl_orpo(objective, average[:, 0], average[:, 1])
        nll = -logps[:, 0].sum() / tokens[:, 0].sum()
        expected = nll - losses.mean().item()
        metrics = {**_reward_metrics(chosen_rewards.numpy(), rejected_rewards.numpy(), logps), "nll_loss": nll,
                   "log_odds_ratio": ratio.item(), "log_odds_chosen": log_odds.item()}
    # float64 both sides, but TRL casts some to float32 (ORPO's log-probs, DPO's accuracies)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    for key in objective.metric_names:
        np.testing.assert_allclose(ours[key], float(metrics[key]), rtol=1e-6, atol=1e-12, err_msg=key)


# --- records ------------------------------------------------------------------------------------------------


BAD_RECORDS = [
    ('{"prompt": "hi", "chosen": "a"}', "missing field 'rejected'"),
    ('{"prompt": "hi", "chosen": "  ", "rejected": "b"}', "field 'chosen' is an empty completion"),
    ('{"prompt": "hi", "chosen": "same", "rejected": "same"}', "are the same completion"),
    ('{"prompt": "hi", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}',
     "must all be strings (standard form) or all message lists"),
]


def test_bad_pairs_name_their_line_or_are_skipped_and_counted(tmp_path):
    good = json.dumps(pairs(2)[1])
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([good, *(line for line, _ in BAD_RECORDS), good]) + "\n")
    for line, (_, says) in enumerate(BAD_RECORDS, start=2):
        only = tmp_path / f"bad{line}.jsonl"
        only.write_text(good + "\n" + BAD_RECORDS[line - 2][0] + "\n")
        with pytest.raises(DataError, match=f"bad{line}.jsonl:2: .*{says[:20]}"):
            build_pipeline([str(only)], llama_tokenizer(), task="dpo", seq_len=SEQ_LEN, batch_size=2, seed=0,
                           shard_index=0, shard_count=1)
    pipeline = build_pipeline([str(path)], llama_tokenizer(), task="dpo", seq_len=SEQ_LEN, batch_size=2, seed=0,
                              on_error="skip", shard_index=0, shard_count=1)
    assert pipeline.stats()["skipped"] == len(BAD_RECORDS)
    batch = next(iter(pipeline))
    assert batch["input_ids"].shape == (2, 2, SEQ_LEN)


# --- the reference and a run ---------------------------------------------------------------------------------


def test_the_lora_reference_is_the_base_model_bitwise(files):
    """Under LoRA the reference is the same parameters with the adapters off: the base model's log-probs exactly,
    however far the adapters have moved."""
    from flax import nnx

    import jaxlm
    from jaxlm.compute.step import reference_logps
    from jaxlm.models.lora import apply_lora

    batch = {k: jnp.asarray(v) for k, v in PreferenceEncoder(llama_tokenizer(), seq_len=SEQ_LEN).encode(
        [("preference", r) for r in pairs(4)]).items()}
    base, _ = jaxlm.load_pretrained(files["llama"])
    model = nnx.clone(base)
    apply_lora(model, ["q", "v", "down"], 4, 8.0)
    graphdef, adapters, frozen, rest = nnx.split(model, nnx.LoRAParam, nnx.Param, ...)
    trained = jax.tree.map(lambda x: x + 0.5, adapters)  # B no longer 0: adapters that changed the model
    objective = Preference("dpo", 0.1)
    ours = jax.jit(lambda a, f, r, b: reference_logps(graphdef, objective, a, None, f, r, b, jnp.float32))(
        trained, frozen, rest, batch)
    expected = jax.jit(lambda m, b: completion_logps(m, b)[0])(base, batch)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(expected))


def test_dpo_trains_end_to_end_and_logs_trls_metrics(files, tmp_path):
    """`python -m jaxlm.train task=dpo` (its `main`, in this process) with LoRA: exit 0; the step-0 evaluation
    scores the reference (the sigmoid loss is ln 2 exactly); train and eval rows carry TRL's metric names;
    hf/ and adapter/ are written."""
    out = tmp_path / "run"
    status = main(["--no-progress", f"model.path={files['llama']}", "task=dpo", f"output_dir={out}",
                   f"data.train=[{files['pairs']}]", "data.eval_fraction=0.25", "train.steps=2", "train.batch_size=4",
                   f"train.seq_len={SEQ_LEN}", "train.learning_rate=0.01", "train.warmup_steps=0", "train.log_every=1",
                   "eval.every=2", "eval.steps=1", "eval.general_prompts=false", "checkpoint.every=2",
                   "model.lora.rank=4"])
    assert status == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    names = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
             "logps/rejected")
    first = rows[0]
    assert first["step"] == 0 and abs(first["eval_loss"] - math.log(2)) < 1e-6
    assert first["eval_rewards/margins"] == 0 and first["eval_rewards/accuracies"] == 0
    assert all(name in rows[1] for name in names)
    last = rows[-1]
    assert last["step"] == 2 and all(f"eval_{name}" in last for name in names)
    assert last["eval_loss"] < math.log(2) and last["eval_rewards/margins"] > 0  # it learned to prefer
    assert (out / "hf" / "config.json").exists() and (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "rewards.png").exists()



def test_precomputed_reference_log_probs_give_what_the_held_reference_gives(files):
    """dpo.precompute_reference in full fine-tuning holds no reference copy; its steps' loss and TRL metrics are
    those of the starting model as the reference, computed here apart: at the first step (policy = reference:
    ln 2, rewards 0) and after an update (a policy that has moved, scored against the starting model)."""
    import jaxlm
    from jaxlm.train.config import load_config
    from jaxlm.train.engine import build_engine
    from jaxlm.train.inputs import prepare_model
    from jaxlm.train.reference import ReferenceTable

    cfg = load_config(None, [f"model.path={files['llama']}", "task=dpo", "train.batch_size=4", "train.warmup_steps=0",
                             f"train.seq_len={SEQ_LEN}", "model.lora.rank=0", "train.loss_chunk_tokens=0",
                             "train.learning_rate=1e-2", "dpo.precompute_reference=true"])
    encode = PreferenceEncoder(llama_tokenizer(), seq_len=SEQ_LEN).encode
    batches = [encode([("preference", r) for r in pairs(8)[i:i + 4]]) for i in (0, 4)]
    model, _ = jaxlm.load_pretrained(files["llama"])
    engine = build_engine(prepare_model(model, cfg), cfg)
    assert engine.reference is None  # one model held
    start = [engine.completion_logps(b) for b in batches]
    engine.references = ReferenceTable.build(engine.completion_logps, batches, progress=False)
    objective = Preference("dpo", cfg.dpo.beta)
    for step, batch in enumerate(batches):
        logps = engine.completion_logps(batch)  # the policy as this step starts
        tokens = batch["completion_mask"].sum(-1).astype(np.float32)
        loss_sum, count, sums = pair_terms(objective, jnp.asarray(logps), jnp.asarray(tokens), start[step])
        got = jax.device_get(engine.step(batch))
        np.testing.assert_allclose(got["loss"], loss_sum / count, rtol=1e-5, atol=1e-6)
        for name, total in sums.items():
            np.testing.assert_allclose(got[name], total / count, rtol=1e-5, atol=1e-5, err_msg=f"step {step}: {name}")
        if step == 0:
            assert abs(got["loss"] - math.log(2)) < 1e-5
        else:
            assert abs(got["rewards/margins"]) > 1e-3  # the policy moved away from the reference


def test_kl_to_base_joins_a_dpo_loss_per_pair(files):
    """train.kl_to_base with task dpo (LoRA: the reference is the adapters off) adds β x KL(policy || starting
    model) summed over each pair's chosen and rejected completion tokens, averaged over pairs as the loss is:
    0 before the first update; after it, the KL computed here from both models' full logits."""
    import jaxlm
    from jaxlm.train.config import load_config
    from jaxlm.train.engine import build_engine
    from jaxlm.train.inputs import prepare_model

    beta = 0.5
    cfg = load_config(None, [f"model.path={files['llama']}", "task=dpo", "train.batch_size=4", "train.warmup_steps=0",
                             f"train.seq_len={SEQ_LEN}", "model.lora.rank=4", "train.learning_rate=5e-2",
                             f"train.kl_to_base={beta}"])
    encode = PreferenceEncoder(llama_tokenizer(), seq_len=SEQ_LEN).encode
    batches = [encode([("preference", r) for r in pairs(8)[i:i + 4]]) for i in (0, 4)]
    base, _ = jaxlm.load_pretrained(files["llama"])
    model, _ = jaxlm.load_pretrained(files["llama"])
    engine = build_engine(prepare_model(model, cfg), cfg)
    first = jax.device_get(engine.step(batches[0]))
    assert abs(first["kl_to_base"]) < 1e-6 and abs(first["loss"] - math.log(2)) < 1e-5

    engine.update_model(model)  # the policy as the second step starts

    def expected(model, base, batch):
        seq = batch["input_ids"].shape[-1]
        ids = batch["input_ids"].reshape(-1, seq)
        inputs = dict(positions=jnp.broadcast_to(jnp.arange(seq), ids.shape),
                      lengths=batch["attention_mask"].reshape(-1, seq).sum(-1))
        log_p = jax.nn.log_softmax(model(ids, **inputs), -1)
        log_q = jax.nn.log_softmax(base(ids, **inputs), -1)
        per_token = jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1) * batch["completion_mask"].reshape(-1, seq)
        (logps, tokens), (reference, _) = completion_logps(model, batch), completion_logps(base, batch)
        loss_sum, count, _ = pair_terms(Preference("dpo", cfg.dpo.beta), logps, tokens, reference)
        return jnp.mean(per_token.reshape(4, -1).sum(-1)), loss_sum / count

    expected_kl, dpo_loss = jax.device_get(
        jax.jit(expected)(model, base, {k: jnp.asarray(v) for k, v in batches[1].items()}))
    second = jax.device_get(engine.step(batches[1]))
    assert expected_kl > 1e-4  # the adapters moved the policy
    np.testing.assert_allclose(second["kl_to_base"], expected_kl, rtol=1e-4)
    np.testing.assert_allclose(second["loss"], dpo_loss + beta * expected_kl, rtol=1e-5)
