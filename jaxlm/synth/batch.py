"""The unit of work: a batch of jobs in, a list of candidates out.

A batch is fixed by the driver (its jobs, its number, its round) before any worker sees
it, and its generation seeds derive from (run seed, batch number, step). So a batch gives
the same candidates on the local engine and on any Ray worker, and a resumed run
regenerates a lost batch exactly.
"""

from __future__ import annotations

import dataclasses

from jaxlm.synth.generator import Output


@dataclasses.dataclass
class Batch:
    number: int  # position in the run (what state.json counts)
    round: int
    jobs: list[dict]  # mode-specific inputs, JSON-like


@dataclasses.dataclass
class Candidate:
    """One generated example with the filter that rejected it (None: passed the local checks)."""

    record: dict  # the data.jsonl line: messages, passage when grounded, provenance
    rejected: str | None

    @property
    def provenance(self) -> dict:
        return self.record["provenance"]


def sampling(config) -> dict:
    return {"temperature": config.temperature, "top_p": config.top_p,
            "max_new_tokens": config.max_new_tokens, "instruction_tokens": config.instruction_tokens}


def candidate(config, generator_name: str, batch: Batch, messages: list[dict], outputs: list[Output],
              rejected: str | None, scores: dict, **fields) -> Candidate:
    """A candidate whose provenance carries the run's settings and the generation cost of ``outputs``.

    ``fields`` go into the provenance (seed ids, passage id, ...); ``record_extra`` holds keys
    of the record itself (a grounded record's ``passage``).
    """
    record_extra = fields.pop("record_extra", {})
    record = {"messages": messages, **record_extra,
              "provenance": provenance(config, generator_name, batch, outputs, scores, **fields)}
    return Candidate(record, rejected)


def provenance(config, generator_name: str, batch: Batch, outputs: list[Output], scores: dict, **fields) -> dict:
    """Where a record came from: the run's settings, ``fields``, ``scores`` and the cost of ``outputs``."""
    return {
        "mode": config.mode, "model": generator_name, "sampling": sampling(config), "seed": config.seed,
        "round": batch.round, "batch": batch.number, **fields,
        "scores": scores,
        "prompt_tokens": sum(o.prompt_tokens for o in outputs),
        "generated_tokens": sum(o.new_tokens for o in outputs),
        "generation_seconds": round(sum(o.seconds for o in outputs), 6),
    }


def single_pass(state, jobs: list[dict], size: int) -> list[Batch]:
    """Batches over ``jobs`` in order as one round, from where the run stopped (none when done)."""
    if state.round is not None and state.batches_done >= state.round["batches"]:
        return []
    state.round = state.round or {"number": 1, "first_batch": 0, "batches": -(-len(jobs) // size),
                                  "pool_size": 0, "kept_at_start": 0, "generated_at_start": 0}
    return [Batch(b, 1, jobs[b * size:(b + 1) * size])
            for b in range(state.round["batches"]) if b >= state.batches_done]


def compared_turns(record: dict) -> tuple[str, str]:
    """(what novelty compares: the user turns, what near-duplicate detection compares: everything)."""
    messages = record["messages"]
    return ("\n".join(m["content"] for m in messages if m["role"] == "user"),
            "\n".join(m["content"] for m in messages))
