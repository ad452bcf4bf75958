"""Text augmentation: EDA word operations and noise injection, seeded.

EDA (Wei & Zou, 2019) edits about ``strength * n_words`` words per op: synonym
replacement, random insertion (of a synonym of some word), random swap and
random deletion. Noise edits about ``strength * n_chars`` characters: typos
(keyboard-neighbour substitution, drop, duplicate, transposition), casing
flips, and whitespace (doubled or dropped spaces).

Text is split into words and the whitespace between them, and edited in place,
so newlines and indentation survive. Every op takes a ``numpy.random.Generator``;
:class:`Augmenter` seeds one per example from (seed, source, example index), so
an example is augmented identically in a replayed run whatever the batching.
"""

from __future__ import annotations

import re

import numpy as np

from jaxlm.data.config import AugmentConfig
from jaxlm.data.synonyms import SynonymSource, load_synonyms

# Function words: replacing or inserting their "synonyms" only adds noise.
STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because
been before being below between both but by can could did do does doing down during each few for
from further had has have having he her here hers herself him himself his how i if in into is it
its itself just me more most my myself no nor not now of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves""".split())  # noqa: SIM905  a word list reads better as text

_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS = {}
for _row in _KEYBOARD_ROWS:
    for _i, _c in enumerate(_row):
        _NEIGHBOURS[_c] = _row[max(0, _i - 1):_i] + _row[_i + 1:_i + 2]


class Words:
    """A text as alternating [separator, word, separator, word, ..., separator]."""

    def __init__(self, text: str):
        self.parts = re.split(r"(\S+)", text)

    def word_slots(self) -> list[int]:
        return list(range(1, len(self.parts), 2))

    def text(self) -> str:
        return "".join(self.parts)


def _edit_count(n: int, strength: float) -> int:
    return max(1, int(round(strength * n))) if n else 0


def _core(word: str) -> tuple[str, str, str]:
    """(leading punctuation, letters, trailing punctuation) of a word."""
    match = re.match(r"^(\W*)(.*?)(\W*)$", word)
    return match.group(1), match.group(2), match.group(3)


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    return word.capitalize() if template[:1].isupper() else word


def _replaceable(words: Words, synonyms: SynonymSource) -> list[int]:
    slots = []
    for slot in words.word_slots():
        core = _core(words.parts[slot])[1]
        if core.isalpha() and core.lower() not in STOPWORDS and synonyms.synonyms(core):
            slots.append(slot)
    return slots


def synonym_replacement(text: str, rng: np.random.Generator, strength: float,
                        synonyms: SynonymSource) -> str:
    words = Words(text)
    slots = _replaceable(words, synonyms)
    for slot in rng.permutation(slots)[: _edit_count(len(words.word_slots()), strength)]:
        lead, core, trail = _core(words.parts[slot])
        choice = synonyms.synonyms(core)[rng.integers(len(synonyms.synonyms(core)))]
        words.parts[slot] = lead + _match_case(core, choice) + trail
    return words.text()


def random_insertion(text: str, rng: np.random.Generator, strength: float,
                     synonyms: SynonymSource) -> str:
    words = Words(text)
    slots = _replaceable(words, synonyms)
    if not slots:
        return text
    for _ in range(_edit_count(len(words.word_slots()), strength)):
        core = _core(words.parts[slots[rng.integers(len(slots))]])[1]
        options = synonyms.synonyms(core)
        at = words.word_slots()[rng.integers(len(words.word_slots()))]
        words.parts[at:at] = [options[rng.integers(len(options))], " "]
    return words.text()


def random_swap(text: str, rng: np.random.Generator, strength: float) -> str:
    words = Words(text)
    slots = words.word_slots()
    if len(slots) < 2:
        return text
    for _ in range(_edit_count(len(slots), strength)):
        i, j = rng.choice(slots, size=2, replace=False)
        words.parts[i], words.parts[j] = words.parts[j], words.parts[i]
    return words.text()


def random_deletion(text: str, rng: np.random.Generator, strength: float) -> str:
    words = Words(text)
    slots = words.word_slots()
    if len(slots) < 2:
        return text  # never delete a one-word text away
    doomed = set(rng.permutation(slots)[: min(_edit_count(len(slots), strength), len(slots) - 1)])
    kept = [words.parts[0]]
    for slot in slots:
        if slot not in doomed:
            kept += [words.parts[slot], words.parts[slot + 1]]
    return "".join(kept)


def char_typos(text: str, rng: np.random.Generator, strength: float) -> str:
    chars = list(text)
    letters = [i for i, c in enumerate(chars) if c.isalpha()]
    for i in sorted(rng.permutation(letters)[: _edit_count(len(letters), strength)], reverse=True):
        c, kind = chars[i], rng.integers(4)
        if kind == 0 and c.lower() in _NEIGHBOURS:  # hit the key next to it
            options = _NEIGHBOURS[c.lower()]
            new = options[rng.integers(len(options))]
            chars[i] = new.upper() if c.isupper() else new
        elif kind == 1:  # dropped letter
            del chars[i]
        elif kind == 2:  # doubled letter
            chars.insert(i, c)
        elif i + 1 < len(chars):  # transposed with the next character
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def casing(text: str, rng: np.random.Generator, strength: float) -> str:
    words = Words(text)
    slots = words.word_slots()
    for slot in rng.permutation(slots)[: _edit_count(len(slots), strength)]:
        word = words.parts[slot]
        words.parts[slot] = [word.lower(), word.upper(), word.swapcase()][rng.integers(3)]
    return words.text()


def whitespace(text: str, rng: np.random.Generator, strength: float) -> str:
    words = Words(text)
    gaps = [i for i in range(2, len(words.parts) - 1, 2) if words.parts[i] == " "]
    for gap in rng.permutation(gaps)[: _edit_count(len(gaps), strength)]:
        words.parts[gap] = "  " if rng.random() < 0.5 else ""
    return words.text()


class Augmenter:
    """Applies the ops enabled in an :class:`AugmentConfig` to input texts."""

    def __init__(self, config: AugmentConfig):
        self.config = config
        needs_synonyms = config.synonym_replacement_p > 0 or config.random_insertion_p > 0
        self.synonyms = load_synonyms(config.synonyms) if needs_synonyms else None

    def rng_for(self, source_id: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, source_id, index])

    def augment_text(self, text: str, rng: np.random.Generator) -> str:
        c = self.config
        ops = [
            (c.synonym_replacement_p, lambda t: synonym_replacement(t, rng, c.eda_strength, self.synonyms)),
            (c.random_insertion_p, lambda t: random_insertion(t, rng, c.eda_strength, self.synonyms)),
            (c.random_swap_p, lambda t: random_swap(t, rng, c.eda_strength)),
            (c.random_deletion_p, lambda t: random_deletion(t, rng, c.eda_strength)),
            (c.char_typo_p, lambda t: char_typos(t, rng, c.noise_strength)),
            (c.casing_p, lambda t: casing(t, rng, c.noise_strength)),
            (c.whitespace_p, lambda t: whitespace(t, rng, c.noise_strength)),
        ]
        for probability, op in ops:
            # Draw for every op, even disabled ones, so enabling one op does not
            # change the random choices of the others.
            if rng.random() < probability:
                text = op(text)
        return text

    def augment_record(self, kind: str, data: dict, rng: np.random.Generator) -> dict:
        """A copy of ``data`` with its input text augmented (never the targets)."""
        data = dict(data)
        if kind == "text":
            data["text"] = self.augment_text(data["text"], rng)
        elif kind == "prompt_completion":
            data["prompt"] = self.augment_text(data["prompt"], rng)
        elif kind == "messages":
            data["messages"] = [
                {**m, "content": self.augment_text(m["content"], rng)} if m["role"] == "user" else m
                for m in data["messages"]]
        return data
