"""The Gopher heuristics for degenerate text (Rae et al. 2021, "Scaling Language Models", table A1).

Repetition: the share of lines / paragraphs that are duplicates (and of the characters they
hold), the share of characters in the most frequent 2-, 3-, 4-gram, and the share of
characters covered by duplicated 5- to 10-grams. Quality: the ratio of symbols ("#", "...")
to words, lines that start with a bullet or end with an ellipsis, and words made of symbols
only. The definitions follow datatrove's GopherRepetitionFilter/GopherQualityFilter, with
two changes for short answers (Gopher filtered web documents of 50+ words): the "top
n-gram" only counts when it occurs at least twice, since in a ten-word answer any single
bigram already holds more than 20% of the characters; and a word with a digit counts like
a word with a letter, so that "1937", "24.99 dollars" or a numbered list are not "symbols".
"""

from __future__ import annotations

import re
from collections import Counter

_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_CODE_BLOCK = re.compile(r"```.*?(```|$)", re.DOTALL)
BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "–", "-", "*", "‣", "⁃")


def parse_ngram_fractions(text: str) -> tuple[tuple[int, float], ...]:
    """``"2:0.2,3:0.18"`` -> ((2, 0.2), (3, 0.18))."""
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        n, sep, fraction = part.partition(":")
        try:
            pairs.append((int(n), float(fraction)))
        except ValueError:
            raise ValueError(f"expected n:fraction pairs like 2:0.2,3:0.18, got {part!r}") from None
        if not sep or pairs[-1][0] < 1:
            raise ValueError(f"expected n:fraction pairs like 2:0.2,3:0.18, got {part!r}")
    return tuple(pairs)


def _duplicates(elements: list[str]) -> tuple[int, int]:
    """(elements that repeat an earlier one, characters in them)."""
    seen: set[str] = set()
    count = chars = 0
    for element in elements:
        if element in seen:
            count += 1
            chars += len(element)
        else:
            seen.add(element)
    return count, chars


def top_ngram_chars(words: list[str], n: int) -> int:
    """Characters in all occurrences of the most frequent n-gram, when it occurs twice or more."""
    grams = Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return len(gram) * count if count > 1 else 0


def duplicate_ngram_chars(words: list[str], n: int) -> int:
    """Characters in n-grams that repeat an earlier n-gram; a repeat skips its n words."""
    seen: set[str] = set()
    chars = position = 0
    while position <= len(words) - n:
        gram = " ".join(words[position:position + n])
        if gram in seen:
            chars += len(gram)
            position += n
        else:
            seen.add(gram)
            position += 1
    return chars


def repetition_problem(text: str, filters) -> str | None:
    """The first Gopher repetition rule ``text`` breaks, as ``rule (value > limit)``, or None."""
    text = text.strip()
    if not text:
        return None
    paragraphs = _PARAGRAPHS.split(text)
    count, chars = _duplicates(paragraphs)
    checks = [("duplicate paragraphs", count / len(paragraphs), filters.dup_para_frac),
              ("duplicate paragraph chars", chars / len(text), filters.dup_para_char_frac)]
    lines = _LINES.split(text)
    count, chars = _duplicates(lines)
    checks += [("duplicate lines", count / len(lines), filters.dup_line_frac),
               ("duplicate line chars", chars / len(text), filters.dup_line_char_frac)]
    for name, value, limit in checks:
        if value > limit:
            return f"{name} {value:.2f} > {limit}"
    words = text.split()
    for n, limit in parse_ngram_fractions(filters.top_ngram_char_frac):
        value = top_ngram_chars(words, n) / len(text)
        if value > limit:
            return f"top {n}-gram chars {value:.2f} > {limit}"
    for n, limit in parse_ngram_fractions(filters.dup_ngram_char_frac):
        value = duplicate_ngram_chars(words, n) / len(text)
        if value > limit:
            return f"duplicate {n}-gram chars {value:.2f} > {limit}"
    return None


def prose(text: str) -> str:
    """``text`` without fenced code blocks: the quality rules are about prose, not code."""
    return _CODE_BLOCK.sub(" ", text)


def symbol_problem(text: str, filters) -> str | None:
    """The first Gopher quality rule ``text``'s prose breaks, or None."""
    text = prose(text).strip()
    words = text.split()
    if not words:
        return None
    symbols = text.count("#") + text.count("...") + text.count("…")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    bullets = sum(line.startswith(BULLETS) for line in lines) / len(lines)
    ellipsis = sum(line.endswith(("...", "…")) for line in lines) / len(lines)
    alnum = sum(any(c.isalnum() for c in w) for w in words) / len(words)
    checks = [("symbol/word ratio", symbols / len(words), filters.max_symbol_ratio, False),
              ("bullet lines", bullets, filters.max_bullet_lines, False),
              ("ellipsis lines", ellipsis, filters.max_ellipsis_lines, False),
              ("words with a letter or digit", alnum, filters.min_alnum_words, True)]
    for name, value, limit, is_floor in checks:
        if (value < limit) if is_floor else (value > limit):
            return f"{name} {value:.2f} {'<' if is_floor else '>'} {limit}"
    return None
