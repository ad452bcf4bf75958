"""Data configuration, embedded by the trainer's config as ``data.*``.

Plain dataclasses whose hints use only str/int/float/bool/list/dict and nested
dataclasses, because the trainer's config loader type-checks from the hints.
``DataConfig.validate`` checks everything that needs no file, so a bad value
fails before a model is loaded or a record is read. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses

from jaxlm.data.records import FORMATS
from jaxlm.errors import ConfigError

MIXING_MODES = ("static", "temperature")
PLANNED_MIXING = {"bandit": "adaptive mixing (weights learned from the training loss)"}
ON_ERROR = ("raise", "skip")


class MixingConfigError(ConfigError):
    """An unsupported or invalid mixing configuration."""


def check_mixing(mode: str, weights: list[float], temperature: float, *, prefix: str = "",
                 sources: str = "sources") -> None:
    """Raises MixingConfigError naming the key (``{prefix}mixing``, ``{sources}[i].weight``...)."""
    if mode in PLANNED_MIXING:
        raise MixingConfigError(f"{prefix}mixing={mode!r} is not available yet ({PLANNED_MIXING[mode]}); "
                                f"use {' or '.join(MIXING_MODES)}")
    if mode not in MIXING_MODES:
        raise MixingConfigError(f"{prefix}mixing={mode!r} is not one of {', '.join(MIXING_MODES)}")
    for i, weight in enumerate(weights):
        if not weight >= 0:  # also catches NaN
            raise MixingConfigError(f"{sources}[{i}].weight must be >= 0, got {weight}")
    if not sum(weights) > 0:
        raise MixingConfigError(f"{sources}[*].weight: at least one weight must be > 0, got {list(weights)}")
    if mode == "temperature" and not temperature > 0:
        raise MixingConfigError(f"{prefix}temperature must be > 0 for temperature mixing, got {temperature}")


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

    ``mixing``: ``static`` (weights as given) or ``temperature`` (weights scaled
    by source size as in T5/mT5: p_i ∝ (weight_i · n_i)^(1/temperature));
    ``bandit`` is reserved (a config error until it is built).
    ``eval_fraction``: when ``eval`` is empty, hold out this fraction of the
    training records (chosen by a hash of their content) for evaluation.
    ``test``: sources scored once before and once after training (never during it).
    """

    train: list[SourceConfig] = dataclasses.field(default_factory=list)
    eval: list[SourceConfig] = dataclasses.field(default_factory=list)
    test: list[SourceConfig] = dataclasses.field(default_factory=list)
    mixing: str = "static"
    temperature: float = 2.0
    on_error: str = "raise"
    pack: bool = True
    shuffle_buffer: int = 10_000
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    eval_fraction: float = 0.0
    tfds_data_dir: str = ""  # "" = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)

    def validate(self, key: str = "data") -> "DataConfig":
        """Raises ConfigError naming ``{key}.field`` for any value that is wrong without reading a file."""
        if not self.train:
            raise ConfigError(f"{key}.train is empty: give at least one source (path and weight)")
        check_mixing(self.mixing, [s.weight for s in self.train], self.temperature, prefix=f"{key}.",
                     sources=f"{key}.train")
        for split in ("eval", "test"):  # evaluation interleaves its sources by weight
            if getattr(self, split):
                check_mixing("static", [s.weight for s in getattr(self, split)], self.temperature,
                             sources=f"{key}.{split}")
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"{key}.on_error={self.on_error!r} is not one of {', '.join(ON_ERROR)}")
        for split in ("train", "eval", "test"):
            for i, source in enumerate(getattr(self, split)):
                if not source.path:
                    raise ConfigError(f"{key}.{split}[{i}].path is empty")
                if source.format not in FORMATS:
                    raise ConfigError(f"{key}.{split}[{i}].format={source.format!r} is not one of "
                                      f"{', '.join(FORMATS)}")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"{key}.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        for name, value in dataclasses.asdict(self.augment).items():
            if name.endswith(("_p", "_strength")) and not 0 <= value <= 1:
                raise ConfigError(f"{key}.augment.{name} must be in [0, 1], got {value}")
        return self
