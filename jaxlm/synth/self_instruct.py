"""self-instruct: grow a pool of tasks from seed tasks, round by round (Wang et al. 2023).

Each round, every job shows the model a numbered list of tasks sampled from the pool
(seed tasks; from round 2 on, two of them generated ones) as plain text and lets it write
the next line: a new task. Tasks that pass the instruction checks are then answered in
the chat format. The driver keeps the survivors of the novelty and near-duplicate checks,
and they join the pool that the next round samples from.

Rounds are sized so that ``--rounds`` rounds reach ``--num`` kept records at the
acceptance seen so far; when they fall short, more rounds follow until ``--num`` is
reached or a round keeps nothing.
"""

from __future__ import annotations

import math
import os
import random

from jaxlm.data.records import read_records
from jaxlm.synth.batch import Batch, Candidate, candidate, compared_turns
from jaxlm.synth.config import SynthConfig, SynthError
from jaxlm.synth.filters import answer_problem, instruction_problem, perplexity
from jaxlm.synth.generator import derive_seed

HEADER = "Below is a list of different tasks for an AI assistant, one per line.\n"
GENERATED_PER_PROMPT = 2  # as Self-Instruct: most examples human-written, a few machine-written
FIRST_ACCEPTANCE_GUESS = 0.3
MAX_BATCHES_PER_ROUND = 64


def default_seeds_path() -> str:
    return os.path.join(os.path.dirname(__file__), "data", "seed_tasks.jsonl")


def load_seeds(path: str) -> list[dict]:
    """Seed tasks as {"id", "instruction", "answer"}: prompt/completion or messages records."""
    seeds = []
    for record in read_records(path):
        data = record.data
        if record.kind == "prompt_completion":
            instruction, answer = data["prompt"], data["completion"]
        elif record.kind == "messages":
            users = [m["content"] for m in data["messages"] if m["role"] == "user"]
            answers = [m["content"] for m in data["messages"] if m["role"] == "assistant"]
            if not users or not answers:
                raise SynthError(f"{record.path}:{record.line}: a seed task needs a user and an assistant turn")
            instruction, answer = users[0], answers[-1]
        else:
            raise SynthError(f"{record.path}:{record.line}: a seed task is a prompt/completion or messages "
                             f"record, got {record.kind}")
        seed_id = str(data.get("id", f"{os.path.basename(record.path)}:{record.line}"))
        seeds.append({"id": seed_id, "instruction": " ".join(instruction.split()), "answer": answer})
    if not seeds:
        raise SynthError(f"{path}: no seed tasks")
    return seeds


class SelfInstruct:
    name = "self-instruct"
    pool_checks = True  # novelty and near duplicates against what was kept (runner._judge)

    def __init__(self, config: SynthConfig):
        self.config = config
        self.seeds = load_seeds(config.seeds or default_seeds_path())
        if len(self.seeds) < config.examples_per_prompt:
            raise SynthError(f"--examples-per-prompt {config.examples_per_prompt}: the seed file has only "
                             f"{len(self.seeds)} tasks")

    def pool_seeds(self) -> list[tuple[str, str]]:
        """(instruction, text) of the seed tasks, which new tasks must differ from too."""
        return [(s["instruction"], f"{s['instruction']}\n{s['answer']}") for s in self.seeds]

    def plan(self, state, kept_instructions: list[str]) -> list[Batch]:
        """The batches still to run in the current round, starting a new round when it is done."""
        config, size = self.config, self.config.batch_size
        current = state.round
        if current is None or state.batches_done >= current["first_batch"] + current["batches"]:
            if current is not None and current["number"] >= config.rounds and current["kept_at_start"] == state.kept:
                return []  # past the planned rounds and the last one kept nothing: stop
            remaining = config.num - state.kept
            number = 1 if current is None else current["number"] + 1
            rounds_left = max(config.rounds - number + 1, 1)
            acceptance = state.kept / state.generated if state.generated else FIRST_ACCEPTANCE_GUESS
            wanted = math.ceil(remaining / rounds_left) / max(acceptance, 0.1)
            batches = min(max(math.ceil(wanted / size), 1), MAX_BATCHES_PER_ROUND)
            current = {"number": number, "first_batch": state.batches_done, "batches": batches,
                       "pool_size": state.kept, "kept_at_start": state.kept, "generated_at_start": state.generated}
            state.round = current
        jobs = self._jobs(current, kept_instructions[:current["pool_size"]])
        first = current["first_batch"]
        return [Batch(first + b, current["number"], jobs[b * size:(b + 1) * size])
                for b in range(current["batches"]) if first + b >= state.batches_done]

    def _jobs(self, round_info: dict, generated: list[str]) -> list[dict]:
        config = self.config
        rng = random.Random(derive_seed(config.seed, round_info["number"]))
        jobs = []
        for _ in range(round_info["batches"] * config.batch_size):
            n_generated = min(GENERATED_PER_PROMPT, len(generated)) if round_info["number"] > 1 else 0
            seeds = rng.sample(self.seeds, config.examples_per_prompt - n_generated)
            picked = rng.sample(range(len(generated)), n_generated)
            examples = [s["instruction"] for s in seeds] + [generated[i] for i in picked]
            rng.shuffle(examples)
            lines = "".join(f"Task {i + 1}: {' '.join(t.split())}\n" for i, t in enumerate(examples))
            jobs.append({"prompt": f"{HEADER}{lines}Task {len(examples) + 1}:",
                         "seed_ids": [s["id"] for s in seeds], "generated_examples": picked})
        return jobs

    compared = staticmethod(compared_turns)

    @staticmethod
    def run_batch(batch: Batch, generator, config: SynthConfig) -> list[Candidate]:
        sample = {"temperature": config.temperature, "top_p": config.top_p}
        proposals = generator([job["prompt"] for job in batch.jobs], max_new_tokens=config.instruction_tokens,
                              seed=derive_seed(config.seed, batch.number, 0), one_line=True, **sample)
        problems = [instruction_problem(p.text, p.finish, config.filters) for p in proposals]
        to_answer = [i for i, problem in enumerate(problems) if problem is None]
        answers = {}
        if to_answer:
            chats = [[{"role": "user", "content": proposals[i].text}] for i in to_answer]
            outputs = generator(chats, max_new_tokens=config.max_new_tokens,
                                seed=derive_seed(config.seed, batch.number, 1), **sample)
            answers = dict(zip(to_answer, outputs, strict=False))
        candidates = []
        for i, (job, proposal) in enumerate(zip(batch.jobs, proposals, strict=False)):
            answer, outputs, scores = answers.get(i), [proposal], {}
            rejected = problems[i]
            if answer is not None:
                outputs.append(answer)
                scores["perplexity"] = perplexity(answer.logprobs)
                rejected = answer_problem(proposal.text, answer.text, answer.finish, scores, config.filters)
            messages = [{"role": "user", "content": proposal.text},
                        {"role": "assistant", "content": answer.text if answer else ""}]
            candidates.append(candidate(config, generator.name, batch, messages, outputs, rejected, scores,
                                        seed_ids=job["seed_ids"], generated_examples=job["generated_examples"]))
        return candidates
