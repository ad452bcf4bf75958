"""Word lists shipped in `jaxlm/audit/data/`, and matching them against token lists.

* ``afinn165.txt``: AFINN-165 valence scores, -5..+5 (Finn Årup Nielsen, CC BY 4.0).
* ``profanity_en.txt``: profanity/slur terms from `cuss` (MIT), see its header.
* ``demographic_terms.json``: demographic term groups, written for jaxlm.
Terms may span several words ("black people", "not good"); matching prefers the
longest term at each position.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from functools import cache

from jaxlm.text.words import words

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")


@dataclasses.dataclass(frozen=True)
class Match:
    start: int
    end: int  # exclusive
    term: str
    value: object


class Lexicon:
    """Terms (one or more words each) mapped to a value, matched on word tokens."""

    def __init__(self, entries: dict[str, object]):
        self._entries = {tuple(words(term)): value for term, value in entries.items() if words(term)}
        self._longest = max((len(k) for k in self._entries), default=0)
        self._first_words = {k[0] for k in self._entries}  # most positions fail this cheap test

    def find(self, tokens: Sequence[str]) -> list[Match]:
        """Non-overlapping matches, left to right, longest term first at each position."""
        found, position = [], 0
        while position < len(tokens):
            if tokens[position] not in self._first_words:
                position += 1
                continue
            for length in range(min(self._longest, len(tokens) - position), 0, -1):
                key = tuple(tokens[position:position + length])
                if key in self._entries:
                    found.append(Match(position, position + length, " ".join(key), self._entries[key]))
                    position += length
                    break
            else:
                position += 1
        return found

    def __len__(self) -> int:
        return len(self._entries)


def _data_lines(name: str) -> list[str]:
    with open(os.path.join(DATA_DIR, name), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]


@cache
def sentiment_lexicon() -> Lexicon:
    """AFINN-165: term -> valence (int, -5..+5)."""
    entries = {}
    for line in _data_lines("afinn165.txt"):
        term, score = line.split("\t")
        entries[term] = int(score)
    return Lexicon(entries)


@cache
def profanity_lexicon() -> Lexicon:
    return Lexicon(dict.fromkeys(_data_lines("profanity_en.txt"), True))


def load_term_groups(path: str | None = None) -> dict[str, dict[str, list[str]]]:
    """category -> group -> terms, from ``path`` or the shipped demographic_terms.json."""
    path = path or os.path.join(DATA_DIR, "demographic_terms.json")
    with open(path, encoding="utf-8") as f:
        try:
            groups = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    groups = {k: v for k, v in groups.items() if not k.startswith("_")}
    for category, members in groups.items():
        if not (isinstance(members, dict) and all(isinstance(t, list) for t in members.values())):
            raise ValueError(f"{path}: category {category!r} must map group names to lists of terms")
    return groups


def demographic_lexicon(groups: dict[str, dict[str, list[str]]]) -> Lexicon:
    """term -> (category, group)."""
    return Lexicon({term: (category, group)
                    for category, members in groups.items()
                    for group, terms in members.items() for term in terms})
