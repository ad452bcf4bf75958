"""GRPO against SFT on the arithmetic word problems (tfds:jaxlm_arithmetic), from SmolLM2-135M-Instruct.

    PYTHONPATH=. .venv/bin/python scripts/experiments/exp_grpo_arithmetic.py --grpo-steps 3 --sft-steps 40

Scores the model before training, after `--grpo-steps` steps of configs/grpo_arithmetic.yaml (with the
batch and group given here), and after `--sft-steps` steps of LoRA SFT on the same train problems answered as
"<expression> = <answer>\\nAnswer: <answer>" (the format the rewards ask for), each on the first `--problems`
test problems: greedy answers of `--max-new-tokens` tokens, scored by the preset's own rewards (correct: the
number after "Answer:" equals the answer; format: the answer ends with that line). Prints one JSON line per
model, with the training wall time and, for GRPO, the share of each step spent sampling. Not a test: minutes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import numpy as np

from jaxlm.compute.rewards import build_rewards, score_all
from jaxlm.data.sources import Selection, as_source_config, selected_records
from jaxlm.sampling.api import generate
from jaxlm.train import train
from jaxlm.train.config import load_config
from jaxlm.train.metrics import read_metrics

PRESET = "configs/grpo_arithmetic.yaml"


def records(split: str, count: int) -> list[dict]:
    found = selected_records(as_source_config(f"tfds:jaxlm_arithmetic:{split}"), Selection())
    return [r.data for r in itertools.islice(found, count)]


def score(model, tokenizer, problems: list[dict], rewards, max_new_tokens: int) -> dict:
    chat = getattr(tokenizer, "chat_template", None) is not None
    prompts = [[{"role": "user", "content": p["prompt"]}] if chat else p["prompt"] for p in problems]
    got = generate(model, tokenizer, prompts, max_new_tokens, 0.0, batch_size=len(prompts))
    assert got.texts is not None
    totals, by_name = score_all(rewards, [p["prompt"] for p in problems], got.texts, problems)
    return {"reward_mean": float(np.mean(totals)), **{k: float(np.mean(v)) for k, v in by_name.items()},
            "example": got.texts[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/exp_grpo_arithmetic")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--grpo-steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2, help="prompts per GRPO step (SFT: examples per step)")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--sft-steps", type=int, default=40)
    parser.add_argument("--models", default="grpo,sft,before", help="which of grpo, sft, before to train and score")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    common = [f"train.batch_size={args.batch}", "eval.general_prompts=false", "eval.sample_prompts=0",
              "checkpoint.every=1000", "data.eval=[]"]
    grpo_cfg = load_config(PRESET, [*common, f"output_dir={args.out}/grpo", f"train.steps={args.grpo_steps}",
                                    f"grpo.group_size={args.group}", f"grpo.max_new_tokens={args.max_new_tokens}"])
    rewards = build_rewards(grpo_cfg.grpo.rewards)
    problems = records("test", args.problems)

    models = args.models.split(",")
    if "grpo" in models:
        run_grpo(grpo_cfg, problems, rewards, args)
    if "sft" in models:
        run_sft(common, problems, rewards, args)
    if "before" in models:
        from jaxlm.train.inputs import load_model

        base, tokenizer = load_model(grpo_cfg)
        report("before", base, tokenizer, problems, rewards, args)


def run_grpo(grpo_cfg, problems, rewards, args) -> None:
    started = time.perf_counter()
    grpo = train(grpo_cfg, progress=False)
    grpo_seconds = time.perf_counter() - started
    rows = [r for r in read_metrics(f"{args.out}/grpo/metrics.jsonl") if "rollout_seconds" in r]
    step_tokens = args.batch * args.group * grpo_cfg.train.seq_len
    shares = [r["rollout_seconds"] / (step_tokens / r["tokens_per_s"]) for r in rows[1:]]  # step 1 compiles
    report("grpo", grpo.model, grpo.tokenizer, problems, rewards, args, seconds=grpo_seconds, steps=args.grpo_steps,
           rollout_share=float(np.mean(shares)) if shares else None,
           train_reward_by_step=[round(r["reward_mean"], 3) for r in rows])


def run_sft(common, problems, rewards, args) -> None:
    sft_data = f"{args.out}/sft_train.jsonl"
    with open(sft_data, "w", encoding="utf-8") as f:
        for p in records("train", args.batch * args.sft_steps):
            f.write(json.dumps({"prompt": p["prompt"],
                                "completion": f"{p['expression']} = {p['answer']}\nAnswer: {p['answer']}"}) + "\n")
    sft_cfg = load_config(PRESET, [*common, f"output_dir={args.out}/sft_{args.sft_steps}", "task=sft",
                                   f"train.steps={args.sft_steps}", f"data.train=[{sft_data}]",
                                   "train.learning_rate=2e-4", "train.log_every=10"])
    started = time.perf_counter()
    sft = train(sft_cfg, progress=False)
    report("sft", sft.model, sft.tokenizer, problems, rewards, args, seconds=time.perf_counter() - started,
           steps=args.sft_steps)


def report(name: str, model, tokenizer, problems, rewards, args, **extra) -> None:
    model.eval()
    print(json.dumps({"model": name, **score(model, tokenizer, problems, rewards, args.max_new_tokens), **extra}),
          flush=True)


if __name__ == "__main__":
    main()
