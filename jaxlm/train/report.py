"""What a finished run leaves for people: answers before and after training with their scores
(the exported model: export.py).

The same answers are scored at step 0 and at the end, with the scores `jaxlm eval` reports
(jaxlm.eval.metrics): held-out questions against their reference answers, and a fixed set of
general prompts outside the training data for degeneration (a fine-tune that loops or runs to the
token limit has broken the model even when its held-out loss improved).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from jaxlm.eval import metrics
from jaxlm.eval.answers import answer, general_prompts


def sample(model, tokenizer, prompts: list[dict], max_new_tokens: int, *, general: bool) -> dict:
    """Greedy answers to the held-out `prompts` (and the general prompts) in one batch, with their scores:
    {"answers", "finish_reasons", "general": [{"prompt", "answer", "finish_reason"}], "scores"}."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    extra = general_prompts() if general else []
    asked = [p["messages"] for p in prompts] + [[{"role": "user", "content": g}] if chat else g for g in extra]
    got = answer(model, tokenizer, asked, max_new_tokens)
    n = len(prompts)
    texts, reasons = got.texts[:n], got.finish_reasons[:n]
    scores = {}
    if prompts:
        scores["answers"] = {**metrics.generation_scores(texts, [p["reference"] for p in prompts]),
                             **metrics.degeneration_scores(texts, reasons)}
    if extra:
        scores["general"] = metrics.degeneration_scores(got.texts[n:], got.finish_reasons[n:])
    return {"answers": texts, "finish_reasons": reasons, "scores": scores,
            "general": [{"prompt": g, "answer": a, "finish_reason": r}
                        for g, a, r in zip(extra, got.texts[n:], got.finish_reasons[n:], strict=False)]}


def write_samples(path: str, prompts: list[dict], before: dict | None, after: dict | None, step: int | None,
                  losses: Sequence[tuple[str, float, float]] = (), test_scope: str = "") -> None:
    """samples.json (everything) and samples.md (a scores table, then each answer before and after).
    `losses`: (what, before, after) of the held-out data, so one table shows the loss and the answers;
    `test_scope`: a sentence saying what the data.test lines were scored on."""
    sides = {"before": before or {}, "after": after or {}}
    rows = [{"prompt": p["messages"][-1]["content"], "reference": p["reference"],
             **{side: s["answers"][i] if s else None for side, s in sides.items()}} for i, p in enumerate(prompts)]
    general = _general_rows(sides)
    scores = {side: s.get("scores") for side, s in sides.items()}
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"step": {"before": 0, "after": step}, "scores": scores, "prompts": rows, "general": general,
                   "losses": [{"score": k, "before": b, "after": a} for k, b, a in losses]},
                  f, indent=2, ensure_ascii=False)
    with open(os.path.splitext(path)[0] + ".md", "w", encoding="utf-8") as f:
        f.write(_markdown(rows, general, scores, step, losses, test_scope))


def read_samples(path: str) -> dict | None:
    """The step-0 side of samples.json, as `sample` returned it (for a resumed run's report)."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if not isinstance(saved, dict) or not saved.get("scores", {}).get("before"):
        return None
    return {"answers": [r["before"] for r in saved["prompts"]], "scores": saved["scores"]["before"],
            "general": [{"prompt": g["prompt"], "answer": g["before"], "finish_reason": g["before_finish"]}
                        for g in saved["general"]]}


def _general_rows(sides: dict) -> list[dict]:
    prompts = next((s["general"] for s in sides.values() if s.get("general")), [])
    rows = []
    for i, g in enumerate(prompts):
        row = {"prompt": g["prompt"]}
        for side, s in sides.items():
            entry = s["general"][i] if s.get("general") else None
            row[side] = entry["answer"] if entry else None
            row[f"{side}_finish"] = entry["finish_reason"] if entry else None
        rows.append(row)
    return rows


SCORE_LINES = (  # (group, key, what it means) for the table of samples.md
    ("answers", "rouge_l", "ROUGE-L F1 vs reference"), ("answers", "bleu", "BLEU"), ("answers", "chrf", "chrF"),
    ("answers", "exact_match", "exact match"), ("answers", "repeat_4", "repeated 4-grams"),
    ("answers", "hit_token_limit", "answers cut at the token limit"),
    ("general", "repeat_4", "repeated 4-grams (seq-rep-4)"), ("general", "looping", "looping answers (rep-4 >= 0.5)"),
    ("general", "hit_token_limit", "answers cut at the token limit"), ("general", "distinct_1", "distinct-1"),
    ("general", "distinct_2", "distinct-2"), ("general", "mean_words", "mean words per answer"),
)


def _markdown(rows, general, scores, step, losses=(), test_scope="") -> str:
    out = ["# Answers before and after training\n",
           f"Greedy answers at step 0 and at step {step if step is not None else '(not finished)'}. "
           "*Held-out* questions are scored against their reference answers; *general* prompts (outside the "
           "training data, `jaxlm/eval/general_prompts.json`) check that the model still answers at all."
           + (f" {test_scope}" if test_scope else "") + "\n",
           "| prompts | score | before | after |", "|---|---|---|---|"]
    out += [f"| held-out | {what} | {b:.3f} | {a:.3f} |" for what, b, a in losses]
    for group, key, label in SCORE_LINES:
        values = [(scores.get(side) or {}).get(group, {}).get(key) for side in ("before", "after")]
        if any(v is not None for v in values):
            out.append(f"| {'held-out' if group == 'answers' else 'general'} | {label} | "
                       + " | ".join("" if v is None else f"{v:.3f}" for v in values) + " |")
    out.append("\n## Held-out questions\n")
    for r in rows:
        out.append(f"### {r['prompt']}\n\n- reference: {r['reference']}\n- before: {r['before']}\n"
                   f"- after: {r['after']}\n")
    if general:
        out.append("## General prompts\n")
        for g in general:
            marks = {side: " *(token limit)*" if g[f"{side}_finish"] == "length" else ""
                     for side in ("before", "after")}
            out.append(f"### {g['prompt']}\n\n- before: {g['before']}{marks['before']}\n"
                       f"- after: {g['after']}{marks['after']}\n")
    return "\n".join(out) + "\n"


def append_rollout_samples(path: str, step: int, metrics: dict, sampled: list, prompts: int) -> None:
    """GRPO: a section of samples.md per evaluation: the held-out rewards, then the first `prompts` prompts
    with each sampled completion and its rewards (`sampled`: rollout.Sampled batches)."""
    names = list(sampled[0].by_name) if sampled else []
    out = [f"## Step {step}\n", f"Mean reward {metrics['eval_reward_mean']:.3f} ("
           + ", ".join(f"{n} {metrics[f'eval_rewards/{n}']:.3f}" for n in names)
           + f"), mean completion {metrics['eval_completion_length']:.1f} tokens.\n"]
    shown = 0
    for part in sampled:
        for i, record in enumerate(part.records):
            if shown >= prompts:
                break
            shown += 1
            prompt = record.get("prompt", record.get("messages"))
            fields = {k: v for k, v in record.items() if k not in ("prompt", "messages")}
            out.append(f"### {_one_line(prompt)}\n" + (f"\n{_one_line(fields)}\n" if fields else ""))
            for j in range(i * part.group_size, (i + 1) * part.group_size):
                scores = ", ".join(f"{n} {part.by_name[n][j]:.3g}" for n in names)
                out.append(f"- reward {part.totals[j]:.3g} ({scores}): {_one_line(part.texts[j])}")
            out.append("")
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def _one_line(value) -> str:
    """Text on one markdown line: newlines shown as ⏎, so a completion's layout stays readable."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.replace("\r\n", "\n").replace("\n", " ⏎ ").strip() or "(empty)"
