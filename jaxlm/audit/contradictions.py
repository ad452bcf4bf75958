"""Contradicting records: the same prompt answered in materially different ways.

Streaming pass: remember a hash of each prompt with the first answer's hash;
a prompt whose answers differ becomes a candidate group. Resolve pass: read
those records back and group their answers by word overlap (Jaccard >= 0.5 =
"the same answer, reworded"); a prompt with two or more answer groups is a
contradiction and all its records are flagged. Only repeated prompts cost
memory beyond one hash pair per record.
"""

from __future__ import annotations

from jaxlm.audit.flags import Flags
from jaxlm.audit.items import AuditItem
from jaxlm.text.words import normalize, words

SAME_ANSWER_JACCARD = 0.5


class ContradictionMeter:
    name = "contradictions"

    def __init__(self):
        self._first: dict[int, tuple[int, int]] = {}  # prompt hash -> (first index, answer hash)
        self._repeats: dict[int, list[int]] = {}  # prompt hash -> all indices, for repeated prompts
        self._answers_differ: set[int] = set()
        self._groups: list[list[int]] = []

    def observe(self, item: AuditItem, flags: Flags) -> None:
        if item.kind not in ("prompt_completion", "messages") or not item.prompt or item.answer is None:
            return
        prompt, answer = hash(normalize(item.prompt)), hash(" ".join(words(item.answer)))
        first = self._first.setdefault(prompt, (item.index, answer))
        if first[0] == item.index:
            return
        self._repeats.setdefault(prompt, [first[0]]).append(item.index)
        if answer != first[1]:
            self._answers_differ.add(prompt)

    def merge(self, other: ContradictionMeter, flags: Flags) -> None:
        """Add a later shard's prompts (see `sharded.py`); exact: a prompt's answers differ when
        the shard's first answer differs from the earlier first one, or the shard's answers do."""
        for prompt, (first, answer) in other._first.items():
            indices = other._repeats.get(prompt, [first])
            if prompt not in self._first:
                self._first[prompt] = (first, answer)
                if prompt in other._repeats:
                    self._repeats[prompt] = list(indices)
            else:
                earlier_first, earlier_answer = self._first[prompt]
                self._repeats.setdefault(prompt, [earlier_first]).extend(indices)
                if answer != earlier_answer:
                    self._answers_differ.add(prompt)
            if prompt in other._answers_differ:
                self._answers_differ.add(prompt)

    def wanted(self) -> set[int]:
        """Records to read back: every record of a prompt whose answers differ."""
        return {i for prompt in self._answers_differ for i in self._repeats[prompt]}

    def resolve(self, items: dict[int, AuditItem], flags: Flags) -> None:
        for prompt in self._answers_differ:
            group = self._repeats[prompt]
            answer_groups = _group_answers([words(items[i].answer) for i in group])
            if answer_groups < 2:
                continue
            self._groups.append(group)
            for index in group:
                flags.add(index, "contradiction", {"first_with_prompt": group[0],
                                                   "records_with_prompt": len(group),
                                                   "distinct_answers": answer_groups},
                          severity=answer_groups)

    def finish(self, flags: Flags) -> dict:
        return {"consistency": {"contradictions": {
            "repeated_prompts": len(self._repeats),
            "contradicting_prompts": len(self._groups),
            "contradicting_records": flags.counts["contradiction"],
            "largest_group": max((len(g) for g in self._groups), default=0),
        }}}


def _group_answers(answers: list[list[str]]) -> int:
    """Number of groups of answers that say the same thing (greedy, by word Jaccard)."""
    representatives: list[set[str]] = []
    for answer in map(set, answers):
        if not any(_jaccard(answer, r) >= SAME_ANSWER_JACCARD for r in representatives):
            representatives.append(answer)
    return len(representatives)


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0
