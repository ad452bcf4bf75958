"""Everything one synthesis run needs to know, as one object (the CLI fills it in).

Filters are configured by name: every field of :class:`FilterConfig` can be set with
``--filter KEY=VALUE`` and any filter switched off with ``--no-filter NAME``.
"""

from __future__ import annotations

import dataclasses
import os

from jaxlm.errors import UserError

MODES = ("self-instruct", "grounded", "back-translate", "preferences")
JUDGES = ("filters", "rouge-l", "chrf")  # or the folder of a sequence classifier
ENGINES = ("local", "ray", "openai")

# Every reason a candidate can be rejected for, in the order the checks run; the
# summary counts each. (The first failing check names the rejection.)
FILTERS = {
    "empty": "the instruction or the answer is empty",
    "truncated": "the output hit the token limit (--max-new-tokens) before it ended",
    "length": "instruction or answer outside the word bounds (min/max_*_words)",
    "unsuitable": "the instruction needs what a text model lacks: images, files, browsing, audio",
    "refusal": "the answer refuses or disclaims (\"I'm sorry\", \"as an AI\")",
    "echo": "the answer repeats the instruction (ROUGE-L >= echo_rouge)",
    "repetition": "Gopher repetition rules: duplicate lines, paragraphs, top and duplicate n-grams",
    "symbols": "Gopher quality rules: symbol ratio, bullet or ellipsis lines, words without letters",
    "support": "grounded: too few answer content words found in the passage (< min_support)",
    "chrf": "back-translate: round-trip chrF below min_chrf",
    "unchanged": "back-translate: the round trip gave back the original text",
    "perplexity": "the answer's perplexity under the model is above max_perplexity",
    "near_duplicate": "MinHash Jaccard (word 5-grams) >= near_duplicate_jaccard with a kept record",
    "novelty": "ROUGE-L of the instruction >= novelty_rouge against a kept or seed instruction",
    "tie": "preferences: the best and the worst answer to the prompt scored the same under --judge",
}

LANGUAGES = {"fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
             "nl": "Dutch", "zh": "Chinese", "ja": "Japanese", "ru": "Russian"}

DEFAULT_CORPUS = "tfds:jaxlm_wiki_summaries:train"


class SynthError(UserError):
    """A problem with the run's options or inputs that the user can fix (exit 2, one line)."""

    label = "synth error"


@dataclasses.dataclass
class FilterConfig:
    disabled: tuple[str, ...] = ()
    min_instruction_words: int = 3
    max_instruction_words: int = 120
    min_answer_words: int = 1
    max_answer_words: int = 400
    echo_rouge: float = 0.8
    # Gopher repetition (Rae et al. 2021, table A1); n-gram rules as "n:fraction,..."
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_ngram_char_frac: str = "2:0.2,3:0.18,4:0.16"
    dup_ngram_char_frac: str = "5:0.15,6:0.14,7:0.13,8:0.12,9:0.11,10:0.1"
    # Gopher quality rules, on the answer's prose (fenced code blocks are not prose)
    max_symbol_ratio: float = 0.1
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    min_alnum_words: float = 0.8
    min_support: float = 0.5
    min_chrf: float = 40.0
    max_perplexity: float | None = None  # None: scored and recorded, never rejected
    near_duplicate_jaccard: float = 0.8
    novelty_rouge: float = 0.7

    def on(self, name: str) -> bool:
        return name not in self.disabled


@dataclasses.dataclass
class SynthConfig:
    mode: str
    out: str
    model: str = "smollm2"  # the shipped SmolLM2 GGUF, an HF folder or a .gguf file
    quantize: str | None = None  # "int8": linear weights in int8 (faster on CPU; changes what is generated)
    num: int = 100  # records to keep
    batch_size: int = 16
    max_new_tokens: int = 256  # per answer; instructions and questions get instruction_tokens
    instruction_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    engine: str = "local"
    workers: int = 2
    # --engine openai: any OpenAI-compatible server generates; `model` is the name it serves
    base_url: str | None = None
    api_key_env: str | None = None  # the environment variable holding the API key (never the key itself)
    concurrency: int = 8  # requests in flight at once
    # self-instruct
    rounds: int = 4
    seeds: str | None = None  # seed task file (default: the shipped jaxlm/synth/data/seed_tasks.jsonl)
    examples_per_prompt: int = 6  # tasks shown per proposal prompt, 2 of them generated from round 2 on
    # grounded
    corpus: str = DEFAULT_CORPUS
    relevant_to: str | None = None  # a topic, or a file of example tasks
    passage_words: int = 180  # passages are cut to this many words
    closed_book: bool = False  # leave the passage out of the user turn
    # back-translate
    data: str | None = None
    pivot: str = "fr"
    # preferences
    prompts: str | None = None
    num_candidates: int = 4  # answers sampled per prompt; the best and the worst make the pair
    judge: str = "filters"  # one of JUDGES, or a sequence classifier's folder
    judge_label: str | None = None  # the classifier's label that means good (default: label 1 of two)
    reference_field: str = "answer"  # a prompt record's reference answer, for --judge rouge-l / chrf
    chat: bool = False  # a string prompt becomes one user message (chat template; conversational pairs)
    progress: bool = True
    filters: FilterConfig = dataclasses.field(default_factory=FilterConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Options that may change between a run and its resumption: they do not change what is generated.
RESUMABLE_CHANGES = ("out", "num", "rounds", "engine", "workers", "progress", "base_url", "api_key_env",
                     "concurrency")


def validate(config: SynthConfig) -> None:
    """Every option checked before any model is loaded or data read."""
    if config.mode not in MODES:
        raise SynthError(f"mode: expected one of {', '.join(MODES)}, got {config.mode!r}")
    if config.quantize not in (None, "int8"):
        raise SynthError(f"--quantize: expected int8 (or nothing), got {config.quantize!r}")
    if config.engine not in ENGINES:
        raise SynthError(f"--engine: expected one of {', '.join(ENGINES)}, got {config.engine!r}")
    if not config.out.strip():
        raise SynthError("--out is empty: name the output folder")
    if (config.engine == "openai") != (config.base_url is not None):
        raise SynthError("--engine openai needs --base-url URL (the server's /v1 address), and --base-url needs "
                         "--engine openai")
    if config.api_key_env and not os.environ.get(config.api_key_env):
        raise SynthError(f"--api-key-env {config.api_key_env}: that environment variable is not set")
    for name in ("num", "batch_size", "max_new_tokens", "instruction_tokens", "workers", "rounds",
                 "examples_per_prompt", "passage_words", "concurrency"):
        if getattr(config, name) < 1:
            raise SynthError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(config, name)}")
    if config.temperature < 0:
        raise SynthError(f"--temperature: must be >= 0, got {config.temperature}")
    if not 0 < config.top_p <= 1:
        raise SynthError(f"--top-p: must be in (0, 1], got {config.top_p}")
    if config.mode == "back-translate":
        if not config.data:
            raise SynthError("back-translate: --data is required (the dataset whose user turns are rewritten)")
        if config.pivot not in LANGUAGES:
            raise SynthError(f"--pivot: unknown language {config.pivot!r}; known: {', '.join(LANGUAGES)}")
    if config.mode == "preferences":
        _validate_preferences(config)
    for path, flag in ((config.seeds, "--seeds"), (config.data, "--data"), (config.prompts, "--prompts")):
        if path and not path.startswith("tfds:") and not os.path.exists(path):
            raise SynthError(f"{flag} {path}: no such file or folder")
    if not config.corpus.startswith("tfds:") and not os.path.exists(config.corpus):
        raise SynthError(f"--corpus {config.corpus}: no such file or folder")
    unknown = sorted(set(config.filters.disabled) - set(FILTERS))
    if unknown:
        raise SynthError(f"--no-filter: unknown filter(s) {unknown}; known: {', '.join(FILTERS)}")
    from jaxlm.synth.gopher import parse_ngram_fractions

    for key in ("top_ngram_char_frac", "dup_ngram_char_frac"):
        try:
            parse_ngram_fractions(getattr(config.filters, key))
        except ValueError as e:
            raise SynthError(f"--filter {key}: {e}") from None


def _validate_preferences(config: SynthConfig) -> None:
    if not config.prompts:
        raise SynthError("preferences: --prompts is required (the prompts to answer: prompt, prompt/completion or "
                         "messages records)")
    if config.num_candidates < 2:
        raise SynthError(f"--num-candidates: must be >= 2 (a pair needs a best and a worst), got "
                         f"{config.num_candidates}")
    if config.temperature <= 0:
        raise SynthError("--temperature 0 is greedy: the candidates for a prompt would all be the same answer; "
                         "give a temperature > 0")
    if config.judge not in JUDGES and not os.path.isdir(config.judge):
        raise SynthError(f"--judge {config.judge}: expected {', '.join(JUDGES)} or the folder of a sequence "
                         "classifier trained by jaxlm")
    if config.judge_label is not None and config.judge in JUDGES:
        raise SynthError(f"--judge-label names a classifier's label; --judge {config.judge} has none")
    if "tie" in config.filters.disabled:
        raise SynthError("--no-filter tie: a pair whose answers scored the same prefers nothing; it is never kept")


def set_filter(filters: FilterConfig, assignment: str) -> None:
    """Apply one ``KEY=VALUE`` to ``filters``, converting VALUE to the field's type."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    fields = {f.name: f for f in dataclasses.fields(FilterConfig) if f.name != "disabled"}
    if not sep or key not in fields:
        raise SynthError(f"--filter {assignment!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
    current = getattr(filters, key)
    text = text.strip()
    try:
        if text.lower() in ("none", "off") and key == "max_perplexity":
            value = None
        elif isinstance(current, str):
            value = text
        elif isinstance(current, int) and not isinstance(current, bool):
            value = int(text)
        else:
            value = float(text)
    except ValueError:
        raise SynthError(f"--filter {key}: {text!r} is not a number") from None
    if value != value:  # NaN: every comparison with it is false, so the filter would silently keep everything
        raise SynthError(f"--filter {key}: {text!r} is not a number")
    setattr(filters, key, value)


def describe_filters() -> str:
    """Filter names and what they reject, then the settable keys with their defaults (for --help)."""
    names = "\n".join(f"  {name:<15}{meaning}" for name, meaning in FILTERS.items())
    keys = "\n".join(f"  {f.name} = {f.default!r}" for f in dataclasses.fields(FilterConfig)
                     if f.name != "disabled")
    return f"filters (--no-filter NAME turns one off):\n{names}\n\nfilter settings (--filter KEY=VALUE):\n{keys}"
