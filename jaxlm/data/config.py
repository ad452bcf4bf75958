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

MIXING_MODES = ("static", "temperature", "bandit")
MAX_RECORD_CHARS = 1_000_000  # longer records are split (causal-LM text) or truncated, with a warning
BANDIT_ALGORITHMS = ("exp3",)
BANDIT_REWARDS = ("progress", "loss")
BANDIT_ARMS = ("sources",)
ON_ERROR = ("raise", "skip")


class MixingConfigError(ConfigError):
    """An unsupported or invalid mixing configuration."""


def check_mixing(mode: str, weights: list[float], temperature: float, *, prefix: str = "",
                 sources: str = "sources") -> None:
    """Raises MixingConfigError naming the key (``{prefix}mixing``, ``{sources}[i].weight``...)."""
    if mode not in MIXING_MODES:
        raise MixingConfigError(f"{prefix}mixing={mode!r} is not one of {', '.join(MIXING_MODES)}")
    for i, weight in enumerate(weights):
        if not weight >= 0:  # also catches NaN
            raise MixingConfigError(f"{sources}[{i}].weight must be >= 0, got {weight}")
    if not sum(weights) > 0:
        raise MixingConfigError(f"{sources}[*].weight: at least one weight must be > 0, got {list(weights)}")
    if mode == "temperature" and not temperature > 0:
        raise MixingConfigError(f"{prefix}temperature must be > 0 for temperature mixing, got {temperature}")
    if mode == "bandit" and len(weights) < 2:
        raise MixingConfigError(f"{prefix}mixing='bandit' learns how to mix sources, but {sources} has "
                                f"{len(weights)}; give at least two sources, or use {prefix}mixing=static")


@dataclasses.dataclass
class BanditConfig:
    """``data.mixing=bandit``: sampling weights learned while training (see :mod:`jaxlm.data.bandit`).

    Each training source is an arm; every ``update_every`` steps the arms' rewards from the
    training loss of their tokens move the weights by exponential weights (EXP3, as in Online
    Data Mixing, Albalak et al. 2023), starting from ``data.train[*].weight``.

    ``reward``: ``progress`` (default) rewards a source by how far its training loss fell since
    its last update, per update interval (learning progress, Graves et al. 2017); ``loss``
    rewards the loss itself, as ODM does (a high loss means more to learn). ``loss`` cannot tell
    a learnable source from one whose loss is high because it cannot be learned (noise,
    mislabelled or garbled text): it moves weight TOWARDS such sources. ``progress`` moves weight
    away from them once their loss stops falling, which is why it is the default. (A held-out
    reward -- the fall of an eval loss credited to recent batches -- needs an evaluation at
    every update and a credit rule across sources; not built.)
    ``learning_rate``: eta in p ∝ prior · exp(eta · R), R each arm's smoothed reward in units
    of the rewards' running scale (so one eta suits both rewards).
    ``floor``: the least probability any source keeps (no source starves); floor · sources < 1.
    ``update_every``: steps between updates; a multiple of ``train.log_every``, since weights
    change only where the host syncs. New weights apply from the very next batch.
    ``smoothing``: R <- smoothing · R + (1 - smoothing) · reward (ODM's moving average).
    ``arms``: ``sources`` (topic clusters within a source are not built).
    """

    algorithm: str = "exp3"
    reward: str = "progress"
    learning_rate: float = 1.0
    floor: float = 0.05
    update_every: int = 5  # the default train.log_every: the most often the host syncs
    smoothing: float = 0.9
    arms: str = "sources"

    def validate(self, key: str, arms: int) -> None:
        for name, value, allowed in (("algorithm", self.algorithm, BANDIT_ALGORITHMS),
                                     ("reward", self.reward, BANDIT_REWARDS), ("arms", self.arms, BANDIT_ARMS)):
            if value not in allowed:
                raise MixingConfigError(f"{key}.{name}={value!r} is not one of {', '.join(allowed)}")
        if not self.learning_rate >= 0:
            raise MixingConfigError(f"{key}.learning_rate must be >= 0, got {self.learning_rate}")
        if not (self.floor >= 0 and self.floor * arms < 1):
            raise MixingConfigError(f"{key}.floor={self.floor} must be >= 0 and below 1/{arms} "
                                    f"(one over the number of sources), or no weight is left to learn")
        if not self.update_every >= 1:
            raise MixingConfigError(f"{key}.update_every must be >= 1, got {self.update_every}")
        if not 0 <= self.smoothing < 1:
            raise MixingConfigError(f"{key}.smoothing must be in [0, 1), got {self.smoothing}")


@dataclasses.dataclass
class SourceConfig:
    """One input source.

    ``path``: a file, a folder, or ``tfds:NAME[/CONFIG][:SPLIT]``.
    ``weight``: relative sampling weight when mixing training sources.
    ``format``: ``auto|jsonl|text|conll|parquet|arrow|csv`` (see :mod:`jaxlm.data.records`).
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
    by source size as in T5/mT5: p_i ∝ (weight_i · n_i)^(1/temperature)) or
    ``bandit`` (weights learned while training, from ``weight``; see ``bandit``).
    ``eval_fraction``: when ``eval`` is empty, hold out this fraction of the
    training records (chosen by a hash of their content) for evaluation.
    ``max_record_chars``: a longer record is split (causal-LM text) or truncated, counted and
    warned; tokenizing multi-megabyte records every epoch costs seconds and gigabytes each time.
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
    bandit: BanditConfig = dataclasses.field(default_factory=BanditConfig)
    eval_fraction: float = 0.0
    tfds_data_dir: str = ""  # "" = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    max_record_chars: int = MAX_RECORD_CHARS  # 0 = no limit

    def validate(self, key: str = "data") -> DataConfig:
        """Raises ConfigError naming ``{key}.field`` for any value that is wrong without reading a file."""
        if not self.train:
            raise ConfigError(f"{key}.train is empty: give at least one source (path and weight)")
        check_mixing(self.mixing, [s.weight for s in self.train], self.temperature, prefix=f"{key}.",
                     sources=f"{key}.train")
        if self.mixing == "bandit":
            self.bandit.validate(f"{key}.bandit", len(self.train))
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
        if self.max_record_chars < 0:
            raise ConfigError(f"{key}.max_record_chars must be >= 0 (0 = no limit), got {self.max_record_chars}")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"{key}.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        for name, value in dataclasses.asdict(self.augment).items():
            if name.endswith(("_p", "_strength")) and not 0 <= value <= 1:
                raise ConfigError(f"{key}.augment.{name} must be in [0, 1], got {value}")
        return self
