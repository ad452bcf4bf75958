"""Experiment (issue 29): DPO on pairs against the base model's own answers, and SFT with and without
`train.kl_to_base`, on SmolLM2-135M-Instruct with LoRA. Results: scripts/experiments/exp_forgetting.md.

    .venv/bin/python scripts/experiments/exp_forgetting.py dpo [--pairs 64] [--steps 10] [--kl 0.05] [--out DIR]
    .venv/bin/python scripts/experiments/exp_forgetting.py sft [--steps 10] [--kl 0.5] [--out DIR]

dpo: the ChatterBot conversations of tfds:jaxlm_chat_pairs (train and validation splits): chosen = the corpus's
answer, rejected = the base model's greedy answer to the same prompt (jaxlm's sampler, 48 new tokens); pairs
where the two are the same are dropped. Then `jaxlm train task=dpo` with LoRA (configs/dpo_lora.yaml, scaled down
to fit a loaded 2-core CPU: 2 pairs a step, 96 tokens, 10 steps, learning rate 5e-4) on the train pairs, the first
`--eval-pairs` validation pairs as data.eval: eval reward accuracy and loss at step 0 and at the end; the general
prompts' scores before and after (samples.md); twice, train.kl_to_base 0 and `--kl`.

sft: the default run (LoRA SFT on the shipped chats; scaled down to 2 rows of 128 tokens a step, 10 steps) twice,
train.kl_to_base 0 and `--kl`, with the held-out Wikipedia summaries (tfds:jaxlm_wiki_summaries:test) as
data.test: their loss before and after (test_metrics.json), and the general prompts' scores before and after. A
higher learning rate than the default (1e-3, which the README notes makes answers repeat) so that forgetting can
show within a few steps on a CPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

PAIRS = "tfds:jaxlm_chat_pairs"


def base_answers(records: list[dict], max_new_tokens: int) -> list[str]:
    """The base model's greedy answers to each record's prompt (a message list), through its chat template."""
    import jaxlm
    from jaxlm.sampling.api import generate
    from jaxlm.train.config import ModelConfig, resolve_path

    model, tokenizer = jaxlm.load_pretrained(resolve_path(ModelConfig().path))
    result = generate(model, tokenizer, [r["prompt"] for r in records], max_new_tokens, temperature=0.0,
                      batch_size=16)
    assert result.texts is not None
    return [text.strip() for text in result.texts]


def make_pairs(split: str, count: int, max_new_tokens: int) -> list[dict]:
    from jaxlm.data.sources import Selection, as_source_config, selected_records

    records = [r.data for r in itertools.islice(selected_records(as_source_config(f"{PAIRS}:{split}"), Selection()),
                                                count)]
    answers = base_answers(records, max_new_tokens)
    pairs = []
    for record, answer in zip(records, answers, strict=True):
        chosen = record["chosen"][0]["content"] if isinstance(record["chosen"], list) else record["chosen"]
        if answer and answer.strip() != chosen.strip():
            pairs.append({"prompt": record["prompt"], "chosen": record["chosen"],
                          "rejected": [{"role": "assistant", "content": answer}]})
    return pairs


def train(overrides: list[str], config: str | None = None) -> float:
    """`python -m jaxlm.train` in its own process (the generation model above is not held beside it)."""
    began = time.perf_counter()
    command = [sys.executable, "-m", "jaxlm.train", "--no-progress", *(["--config", config] if config else []),
               *overrides]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    return time.perf_counter() - began


def rows(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def general_scores(out: str) -> dict:
    with open(os.path.join(out, "samples.json"), encoding="utf-8") as f:
        samples = json.load(f)
    return {side: (samples["scores"].get(side) or {}).get("general") for side in ("before", "after")}


def dpo(args) -> None:
    os.makedirs(args.out, exist_ok=True)
    files = {}
    for split, count in (("train", args.pairs), ("validation", args.pairs // 2)):
        if os.path.exists(os.path.join(args.out, f"pairs_{split}.jsonl")):  # made by an earlier call
            files[split] = os.path.join(args.out, f"pairs_{split}.jsonl")
            continue
        began = time.perf_counter()
        pairs = make_pairs(split, count, args.max_new_tokens)
        files[split] = os.path.join(args.out, f"pairs_{split}.jsonl")
        with open(files[split], "w", encoding="utf-8") as f:
            f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
        print(f"{split}: {len(pairs)} pairs of {count} prompts in {time.perf_counter() - began:.0f}s", flush=True)
    summary = {}
    for beta in (0.0, args.kl):  # the same DPO run without and with train.kl_to_base
        out = os.path.join(args.out, "dpo" if beta == 0 else f"dpo_kl{beta:g}")
        seconds = train([f"output_dir={out}", f"data.train=[{files['train']}]", f"data.eval=[{files['validation']}]",
                         "data.test=[]", f"train.steps={args.steps}", "train.batch_size=2", "train.seq_len=96",
                         f"train.learning_rate={args.lr}", "train.warmup_steps=2", f"eval.every={args.steps}",
                         f"eval.steps={args.eval_pairs // 2}", f"checkpoint.every={args.steps}",
                         f"train.kl_to_base={beta}"], "configs/dpo_lora.yaml")
        evals = [r for r in rows(out) if "eval_loss" in r]
        summary[f"kl_to_base={beta:g}"] = {
            "seconds": seconds, "first": evals[0], "last": evals[-1], "general": general_scores(out),
            "kl_to_base_last": [r.get("kl_to_base") for r in rows(out) if "loss" in r][-1]}
        print(json.dumps(summary, indent=1), flush=True)
    with open(os.path.join(args.out, "dpo_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)


def sft(args) -> None:
    summary = {}
    for beta in (0.0, args.kl):
        out = os.path.join(args.out, f"sft_kl{beta:g}")
        seconds = train([f"output_dir={out}", f"train.steps={args.steps}", f"train.learning_rate={args.lr}",
                         "train.batch_size=2", "train.seq_len=128", "train.warmup_steps=2", "train.log_every=5",
                         f"train.kl_to_base={beta}", "data.test=[{path: 'tfds:jaxlm_wiki_summaries:test'}]",
                         f"eval.test_steps={args.test_steps}", f"eval.every={args.steps}", "eval.steps=4",
                         f"checkpoint.every={args.steps}", "eval.sample_prompts=0"])
        with open(os.path.join(out, "test_metrics.json"), encoding="utf-8") as f:
            test = json.load(f)
        evals = [r for r in rows(out) if "eval_loss" in r]
        summary[f"kl_to_base={beta:g}"] = {
            "seconds": seconds, "wiki_loss": (test["before"]["loss"], test["after"]["loss"]),
            "chat_eval_loss": (evals[0]["eval_loss"], evals[-1]["eval_loss"]),
            "kl_to_base_last": [r.get("kl_to_base") for r in rows(out) if "loss" in r][-1],
            "general": general_scores(out)}
        print(json.dumps(summary, indent=1), flush=True)
    with open(os.path.join(args.out, "sft_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("dpo", "sft"))
    parser.add_argument("--out", default="runs/exp_forgetting")
    parser.add_argument("--pairs", type=int, default=64, help="dpo: training prompts (half as many held out)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="dpo: length of the base model's answers")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eval-pairs", type=int, default=16, help="dpo: held-out pairs scored before and after")
    parser.add_argument("--lr", type=float, default=None, help="default: 5e-4 for dpo (10x its preset: few steps), "
                        "1e-3 for sft")
    parser.add_argument("--kl", type=float, default=None, help="the train.kl_to_base of the second run (default: 0.5 "
                        "for sft, per token; 0.05 for dpo, per pair, summed over its completions' tokens)")
    parser.add_argument("--test-steps", type=int, default=4, help="sft: held-out Wikipedia batches scored")
    args = parser.parse_args()
    if args.lr is None:
        args.lr = 5e-4 if args.part == "dpo" else 1e-3
    if args.kl is None:
        args.kl = 0.05 if args.part == "dpo" else 0.5
    (dpo if args.part == "dpo" else sft)(args)


if __name__ == "__main__":
    main()
