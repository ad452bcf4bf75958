"""back-translate: rewrite the user turns of a dataset through a pivot language.

Each user turn goes to the pivot language and back with the model (chat prompts); the
assistant turns are kept as they are. The round trip's fidelity is chrF (``sacrebleu``)
of the rewritten turn against the original, recorded per turn and filtered by a floor
(``min_chrf``); a round trip that gives back the original text is dropped as unchanged.
Records are written in the messages format whatever format they were read in.
"""

from __future__ import annotations

from jaxlm.synth.batch import Batch, Candidate, candidate, compared_turns, single_pass
from jaxlm.synth.config import LANGUAGES, SynthConfig, SynthError
from jaxlm.synth.filters import round_trip_problem
from jaxlm.synth.generator import derive_seed

TRANSLATE_PROMPT = "Translate the following text into {language}. Reply with the translation only.\n\n{text}"


def as_messages(kind: str, data: dict) -> list[dict] | None:
    if kind == "messages":
        return [{"role": m["role"], "content": m["content"]} for m in data["messages"]]
    if kind == "prompt_completion":
        return [{"role": "user", "content": data["prompt"]}, {"role": "assistant", "content": data["completion"]}]
    return None  # plain text and NER records have no user turn


class BackTranslate:
    name = "back-translate"
    pool_checks = True  # novelty and near duplicates against what was kept (runner._judge)

    def __init__(self, config: SynthConfig):
        self.config = config
        self.jobs: list[dict] | None = None

    def pool_seeds(self) -> list[tuple[str, str]]:
        return []

    def _read_jobs(self) -> list[dict]:
        from jaxlm.data.sources import as_source_config, iter_records

        jobs = []
        for record in iter_records(as_source_config(self.config.data)):
            messages = as_messages(record.kind, record.data)
            if messages and any(m["role"] == "user" and m["content"].strip() for m in messages):
                jobs.append({"messages": messages, "source": {"path": record.path, "line": record.line}})
        if not jobs:
            raise SynthError(f"--data {self.config.data}: no records with a user turn "
                             "(messages or prompt/completion)")
        return jobs

    def plan(self, state, kept_instructions: list[str]) -> list[Batch]:
        if self.jobs is None:
            self.jobs = self._read_jobs()
        return single_pass(state, self.jobs, self.config.batch_size)

    compared = staticmethod(compared_turns)

    @staticmethod
    def run_batch(batch: Batch, generator, config: SynthConfig) -> list[Candidate]:
        sample = {"temperature": config.temperature, "top_p": config.top_p,
                  "max_new_tokens": config.max_new_tokens}
        turns = [(j, t) for j, job in enumerate(batch.jobs)
                 for t, m in enumerate(job["messages"]) if m["role"] == "user"]
        originals = [batch.jobs[j]["messages"][t]["content"] for j, t in turns]

        def translate(texts, language, step):
            chats = [[{"role": "user", "content": TRANSLATE_PROMPT.format(language=language, text=text)}]
                     for text in texts]
            return generator(chats, seed=derive_seed(config.seed, batch.number, step), **sample)

        pivots = translate(originals, LANGUAGES[config.pivot], 0)
        backs = translate([p.text for p in pivots], "English", 1)
        per_job: dict[int, list[int]] = {}
        for k, (j, _) in enumerate(turns):
            per_job.setdefault(j, []).append(k)
        candidates = []
        for j, job in enumerate(batch.jobs):
            messages = [dict(m) for m in job["messages"]]
            rejected, turn_scores, outputs = None, [], []
            for k in per_job.get(j, []):
                scores = {}
                problem = round_trip_problem(originals[k], pivots[k].text, backs[k].text,
                                             [pivots[k].finish, backs[k].finish], scores, config.filters)
                rejected = rejected or problem
                turn_scores.append(scores["chrf"])
                outputs += [pivots[k], backs[k]]
                messages[turns[k][1]]["content"] = backs[k].text
            scores = {"chrf": min(turn_scores), "chrf_per_turn": turn_scores}
            candidates.append(candidate(
                config, generator.name, batch, messages, outputs, rejected, scores,
                pivot=config.pivot, source=job["source"],
                original=[originals[k] for k in per_job[j]], pivot_text=[pivots[k].text for k in per_job[j]]))
        return candidates
