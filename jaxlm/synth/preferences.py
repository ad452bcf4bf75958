"""preferences: chosen/rejected pairs for `task: dpo`, from the model's own answers ranked by a judge.

For each prompt the model samples ``--num-candidates`` answers (one batch row each, so they differ);
`judges.score_answers` scores them and the best becomes ``chosen``, the worst ``rejected``. A prompt whose
best and worst tie (or that has fewer than two non-empty answers) gives no pair: it goes to rejected.jsonl,
counted under ``tie`` (or ``empty``). A string prompt gives TRL's standard form (three strings, the prompt
tokenized as raw text, and sampled so); a message prompt, or a string one with ``--chat``, its
conversational form (answers as one assistant message each, sampled through the chat template).
"""

from __future__ import annotations

from jaxlm.data.records import DataError
from jaxlm.synth import judges
from jaxlm.synth.batch import Batch, Candidate, provenance, single_pass
from jaxlm.synth.config import JUDGES, SynthConfig
from jaxlm.synth.generator import derive_seed


class Preferences:
    name = "preferences"
    pool_checks = False  # the prompts are the user's: two alike are not duplicates to drop

    def __init__(self, config: SynthConfig):
        self.config = config
        self.jobs = read_jobs(config)  # bad prompts are errors before the model loads
        if config.judge not in JUDGES:
            judges.classifier(config.judge, config.judge_label)  # checked and loaded before --out is written

    def pool_seeds(self) -> list[tuple[str, str]]:
        return []

    def plan(self, state, kept_instructions: list[str]) -> list[Batch]:
        return single_pass(state, self.jobs, self.config.batch_size)

    @staticmethod
    def run_batch(batch: Batch, generator, config: SynthConfig) -> list[Candidate]:
        k = config.num_candidates
        outputs = generator([job["prompt"] for job in batch.jobs for _ in range(k)],
                            seed=derive_seed(config.seed, batch.number, 0), max_new_tokens=config.max_new_tokens,
                            temperature=config.temperature, top_p=config.top_p)
        candidates = []
        for j, job in enumerate(batch.jobs):
            answers = outputs[j * k:(j + 1) * k]
            scores, notes = judges.score_answers(config, prompt_text(job["prompt"]), job["reference"], answers)
            usable = [i for i, answer in enumerate(answers) if answer.text.strip()]
            best = max(usable, key=scores.__getitem__, default=0)
            worst = min(usable, key=scores.__getitem__, default=0)
            rejected = None
            if len(usable) < 2:
                rejected = "empty"
            elif scores[best] == scores[worst] or answers[best].text == answers[worst].text:
                rejected = "tie"
            record = {"prompt": job["prompt"], "chosen": _completion(job, answers[best].text),
                      "rejected": _completion(job, answers[worst].text),
                      "provenance": provenance(
                          config, generator.name, batch, answers,
                          {"chosen": round(scores[best], 6), "rejected": round(scores[worst], 6),
                           "candidates": [round(s, 6) for s in scores]},
                          judge=config.judge, **({"judge_label": config.judge_label} if config.judge_label else {}),
                          source=job["source"], candidates=[a.text for a in answers],
                          **({"judge_notes": notes} if any(notes) else {}))}
            candidates.append(Candidate(record, rejected))
        return candidates


def read_jobs(config: SynthConfig) -> list[dict]:
    """{prompt, reference, source} per record of --prompts; DataError naming file:line for one that has no
    prompt, or no reference when the judge needs one."""
    from jaxlm.data.sources import as_source_config, iter_records

    jobs = []
    for record in iter_records(as_source_config(config.prompts or "")):
        data, field = record.data, config.reference_field
        if record.kind in ("prompt", "preference"):
            prompt, reference = data["prompt"], data.get(field)
        elif record.kind == "prompt_completion":
            prompt, reference = data["prompt"], data["completion"]
        elif record.kind == "messages":
            messages = [{"role": m["role"], "content": m["content"]} for m in data["messages"]]
            answered = messages[-1]["role"] == "assistant" and len(messages) > 1
            prompt = messages[:-1] if answered else messages
            reference = messages[-1]["content"] if answered else data.get(field)
        else:
            raise DataError(record.path, record.line, f"preferences needs prompts (prompt, prompt/completion or "
                                                      f"messages records), got a {record.kind} record")
        if config.chat and isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if config.judge in ("rouge-l", "chrf") and not isinstance(reference, str):
            raise DataError(record.path, record.line, f"--judge {config.judge} scores answers against a reference: "
                                                      f"the record has no string {field!r} (--reference-field), "
                                                      "completion or final assistant turn")
        jobs.append({"prompt": prompt, "reference": reference if isinstance(reference, str) else None,
                     "source": {"path": record.path, "line": record.line}})
    if not jobs:
        raise DataError(config.prompts or "", 0, "no prompts")
    return jobs


def prompt_text(prompt: str | list[dict]) -> str:
    """What the filters compare an answer with (the echo check): the prompt, or its last user turn."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def _completion(job: dict, text: str) -> str | list[dict]:
    return text if isinstance(job["prompt"], str) else [{"role": "assistant", "content": text}]
