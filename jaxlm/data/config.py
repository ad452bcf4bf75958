"""Data configuration, embedded by the trainer's config as ``data.*``.

Plain dataclasses whose hints use only str/int/float/bool/list/dict and nested
dataclasses, because the trainer's config loader type-checks from the hints.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SourceConfig:
    """One input source.

    ``path``: a file, a folder, or ``tfds:NAME[/CONFIG][:SPLIT]``.
    ``weight``: relative sampling weight when mixing training sources.
    ``format``: ``auto|jsonl|text|conll`` (see :mod:`jaxlm.data.records`).
    ``fields``: canonical name -> the file's field name, e.g. ``{"text": "body"}``.
    """

    path: str
    weight: float = 1.0
    format: str = "auto"
    fields: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class AugmentConfig:
    """Training-time augmentation; every op is off (probability 0) by default.

    Each ``*_p`` is the probability that an example gets that op; the matching
    strength is the fraction of words (EDA, NER token ops) or characters
    (noise) the op touches. Augmentation only touches model INPUTS: plain text,
    prompts and user turns, never completions or assistant turns, so the model
    is not trained to produce noisy text. Randomness is derived from ``seed``
    and the example's position, so runs and resumes replay it exactly.
    """

    seed: int = 0
    # EDA (Wei & Zou, 2019): synonym replacement, random insertion/swap/deletion.
    synonym_replacement_p: float = 0.0
    random_insertion_p: float = 0.0
    random_swap_p: float = 0.0
    random_deletion_p: float = 0.0
    eda_strength: float = 0.1
    # Where synonyms come from: "auto" (the mythes thesaurus, else WordNet),
    # "wordnet", "mythes", or a path to a WordNet dict folder or mythes .dat file.
    synonyms: str = "auto"
    # Noise injection.
    char_typo_p: float = 0.0
    casing_p: float = 0.0
    whitespace_p: float = 0.0
    noise_strength: float = 0.03
    # Label-preserving NER variants (token classification only).
    ner_mention_replacement_p: float = 0.0
    ner_token_ops_p: float = 0.0
    ner_strength: float = 0.1

    def any_enabled(self) -> bool:
        return any(value > 0 for name, value in dataclasses.asdict(self).items()
                   if name.endswith("_p"))


@dataclasses.dataclass
class DataConfig:
    """The data section of a training config.

    ``mixing``: ``static`` (weights as given), ``temperature`` (weights scaled
    by source size as in T5/mT5: p_i ∝ (weight_i · n_i)^(1/temperature)), or
    ``bandit`` (reserved, not implemented yet).
    ``eval_fraction``: when ``eval`` is empty, hold out this fraction of the
    training records (chosen by a hash of their content) for evaluation.
    """

    train: list[SourceConfig] = dataclasses.field(default_factory=list)
    eval: list[SourceConfig] = dataclasses.field(default_factory=list)
    mixing: str = "static"
    temperature: float = 2.0
    on_error: str = "raise"
    pack: bool = True
    shuffle_buffer: int = 10_000
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    eval_fraction: float = 0.0
    tfds_data_dir: str = ""  # "" = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
