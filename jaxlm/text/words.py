"""Text helpers shared by the audit measures: words, normalisation, encoding checks.

Every word-level measure (n-grams, lexicons, distinct-n, duplication) uses the
same tokenisation, :func:`words`, so that their figures agree with each other.
"""

from __future__ import annotations

import re
import unicodedata

# Lower-case word tokens; keeps "can't" and "non-binary" whole because the
# lexicons (AFINN, demographic terms) list such words with their punctuation.
_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")

# Signs that text went through a wrong decode at some point.
_ENCODING_PROBLEMS = {
    "replacement_char": re.compile("\ufffd"),
    # UTF-8 bytes read as Latin-1/cp1252: "Ã©" for "é", "â€™" for "’", "Â " for NBSP.
    "mojibake": re.compile("Ã[\u0080-\u00bf]|â€|Â[\u00a0-\u00bf]"),
    "control_char": re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"),
    "lone_surrogate": re.compile("[\ud800-\udfff]"),
}


def words(text: str) -> list[str]:
    """Lower-case word tokens of ``text``; punctuation is dropped."""
    return [w.replace("’", "'") for w in _WORD.findall(text.lower())]


def normalize(text: str) -> str:
    """Comparison form of a text: NFC, case-folded, whitespace collapsed to one space."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def encoding_problems(text: str) -> list[str]:
    """Names of the encoding problems found in ``text`` (empty when clean)."""
    return [name for name, pattern in _ENCODING_PROBLEMS.items() if pattern.search(text)]


def snippet(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters for display, marking the cut."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Function words, ignored when asking whether an answer's content comes from a passage.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves yes also it's i'm don't
""".split())  # noqa: SIM905  a word list reads better as text


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry content (no stopwords)."""
    return [w for w in words(text) if w not in STOPWORDS]
