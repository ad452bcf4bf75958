"""``build_pipeline``: sources -> mixed, augmented, tokenized, packed batches.

    read (per source, this host's shard) -> shuffle -> repeat -> mix
      -> augment -> tokenize -> pack -> batch           (all tf.data)

With ``mixing="bandit"`` the weights change while training, so the mix moves
to the host: each source is augmented, tokenized and packed on its own, and
:class:`jaxlm.data.mixing.RowMixer` draws every row's source with the weights
in force for that batch (``Pipeline.set_weights``).

Resume. The pipeline position is ``batches`` consumed, and the state is
``{"version", "settings", "batches", counters}`` -- plain JSON. Every stage
is deterministic given the settings (seeded shuffles and mixing, ordered
parallel maps, augmentation seeded per example), so restoring means
rebuilding the same pipeline and skipping ``batches`` batches
(``Dataset.skip``). Replaying costs about the time the skipped batches took
to produce, and never needs a shuffle buffer or tf.data iterator snapshot in
the checkpoint (those do not serialise to JSON, and py-function stages cannot
be snapshotted at all). With bandit mixing the state also holds the rows
taken from each source and the weight schedule, and each source's stream is
skipped on its own. ``set_state`` refuses a state saved with different
settings, naming what changed.

Reading. Building reads each source once, keeping this host's records as
JSON strings in memory (``Dataset.from_tensor_slices``): bad records are
found before training starts (``on_error="raise"`` fails fast with
``path:line:``, ``"skip"`` knows the count), temperature mixing knows source
sizes, and shuffling/repeating stays inside tf.data, far faster than
re-running a Python generator every epoch. The price is host memory of about
the serialized size of this host's shard of the data.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from jaxlm.data import packing, stages
from jaxlm.data.augment import Augmenter
from jaxlm.data.config import MAX_RECORD_CHARS, AugmentConfig, DataConfig
from jaxlm.data.encode import ClassificationEncoder, LMEncoder, NerEncoder, label_of, sorted_labels, word_tags
from jaxlm.data.mixing import RowMixer, mix, mixture_weights
from jaxlm.data.ner_augment import MentionPool, NerAugmenter
from jaxlm.data.preference import PreferenceEncoder
from jaxlm.data.records import DataError, ReadStats
from jaxlm.data.repairs import PIECE_CHARS, cap_length, text_pieces, to_iob2
from jaxlm.data.sources import Selection, as_source_config, record_to_json, selected_records
from jaxlm.errors import warn
from jaxlm.tasks import IGNORE_LABEL, PREFERENCE_TASKS, TASKS

STATE_VERSION = 1


@dataclasses.dataclass
class _Survey:
    """What one pass over a source on this host found."""

    name: str
    records: list[str]  # JSON, see sources.record_to_json
    read_stats: ReadStats
    tags: set  # NER tags seen
    labels: set  # classification labels seen (names)
    changed: dict  # "split" / "truncated" (records longer than max_record_chars), "iob2" (tags): [count, first line]


def build_pipeline(sources, tokenizer, *, task: str, seq_len: int, batch_size: int, seed: int,
                   mixing: str = "static", temperature: float = 2.0, on_error: str = "raise",
                   augment: AugmentConfig | None = None, pack: bool = True, repeat: bool = True,
                   shard_index: int | None = None, shard_count: int | None = None,
                   label_names: list[str] | None = None, shuffle_buffer: int = 10_000,
                   eval_fraction: float = 0.0, split: str = "all",
                   tfds_data_dir: str | None = None, max_record_chars: int = MAX_RECORD_CHARS) -> Pipeline:
    """A :class:`Pipeline` over ``sources`` (SourceConfigs, paths or dicts).

    ``repeat=False`` gives a finite pass (for evaluation): every record once,
    no shuffling or augmentation, sources interleaved by weight (seeded) so
    that the first batches already represent every source. ``split``/``eval_fraction`` select
    the held-out part of the records (see :mod:`jaxlm.data.sources`). Records longer than
    ``max_record_chars`` characters are split (causal-LM text) or truncated, with a warning that
    counts them: tokenizing a multi-megabyte record in every epoch costs seconds and gigabytes.
    NER tags are read as IOB2 (an ``I-X`` that starts an entity becomes ``B-X``, counted and warned).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    configs = [as_source_config(s) for s in sources]
    if not configs:
        raise ValueError("build_pipeline needs at least one source")
    if shard_index is None or shard_count is None:
        import jax
        shard_index, shard_count = jax.process_index(), jax.process_count()
    augment = augment or AugmentConfig()
    selection = Selection(shard_index, shard_count, eval_fraction, split)
    allowed = set(label_names) if label_names is not None and task == "token_classification" else None
    read_kwargs = dict(allowed_tags=allowed, tfds_data_dir=tfds_data_dir)

    mentions = MentionPool()  # entity mentions of all sources, for NER augmentation
    # a piece ends a chunk early: at 64 x seq_len characters (~16 chunks) that costs at most ~1/16 of a row
    cap = dict(max_chars=max_record_chars, split_text=task == "causal_lm", piece_chars=max(PIECE_CHARS, 64 * seq_len),
               used_chars=0 if task == "causal_lm" else USED_CHARS_PER_TOKEN * (seq_len + 1))
    known = label_names if task == "classification" else None
    surveys = [_survey(c, selection, on_error, read_kwargs, mentions, cap, task, known) for c in configs]
    if task == "token_classification" and label_names is None:
        tags = set().union(*(s.tags for s in surveys)) - {"O"}
        label_names = ["O", *sorted(tags)]
    if task == "classification" and label_names is None:
        label_names = sorted_labels(set().union(*(s.labels for s in surveys)))
        if len(label_names) < 2:
            raise DataError(configs[0].path, 0, f"classification needs at least 2 labels, the data has {label_names}")
    weights = mixture_weights([c.weight for c in configs], [len(s.records) for s in surveys],
                              mode=mixing, temperature=temperature)

    # --- shuffle, repeat, mix ---
    per_source = []
    for source_id, survey in enumerate(surveys):
        dataset = tf.data.Dataset.from_tensor_slices(tf.constant(survey.records, tf.string))
        if repeat:
            dataset = dataset.shuffle(min(shuffle_buffer, len(survey.records)) or 1,
                                      seed=seed * 1009 + source_id,
                                      reshuffle_each_iteration=True).repeat()
        per_source.append(dataset.enumerate().map(
            lambda index, record, source_id=source_id:
                {"record": record, "source_id": tf.constant(source_id, tf.int32), "index": index}))

    # --- augment, tokenize, pack: one stream of rows for the mixture, or one per source for bandit mixing ---
    augmenters = None
    if repeat and augment.any_enabled():
        augmenter = Augmenter(augment)
        augmenters = (augmenter, NerAugmenter(augment, mentions, augmenter.synonyms))
    faults = stages.Faults()

    def rows_of(dataset, watched: list[_Survey]):
        dataset = dataset.batch(stages.PYTHON_BATCH)
        if augmenters:
            dataset = stages.augment(dataset, *augmenters)
        if task == "grpo":  # prompts stay records: the rollout tokenizes them and the rewards read their fields
            return dataset.unbatch().map(lambda row: {"record": row["record"], "source_id": row["source_id"]})
        if task in PREFERENCE_TASKS:  # pairs are rows of their own, never packed
            return stages.encode_rows(dataset, PreferenceEncoder(tokenizer, seq_len=seq_len), faults)
        if task in ("token_classification", "classification"):
            encoder = NerEncoder if task == "token_classification" else ClassificationEncoder
            return stages.encode_rows(dataset, encoder(tokenizer, label_names=label_names, seq_len=seq_len), faults)
        watch = stages.ExampleWatch([s.name for s in watched], sum(len(s.records) for s in watched))
        documents = stages.encode_documents(dataset, LMEncoder(tokenizer, task=task, seq_len=seq_len), faults, watch)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return (packing.pack if pack else packing.pad_each)(documents, seq_len, pad_id)

    options = tf.data.Options()
    options.deterministic = True
    mixer = None
    if mixing == "bandit" and repeat:
        streams = [rows_of(d, [survey]).prefetch(tf.data.AUTOTUNE).with_options(options)
                   for d, survey in zip(per_source, surveys, strict=False)]
        mixer = RowMixer(streams, weights, seed=seed, shard_index=shard_index, batch_size=batch_size)
        dataset = None
    else:
        dataset = rows_of(mix(per_source, weights, seed=seed, finite=not repeat), surveys)
        dataset = dataset.batch(batch_size, drop_remainder=repeat).prefetch(tf.data.AUTOTUNE).with_options(options)

    settings = dict(sources=[dataclasses.asdict(c) for c in configs], task=task, seq_len=seq_len,
                    batch_size=batch_size, seed=seed, mixing=mixing, temperature=temperature,
                    augment=dataclasses.asdict(augment), pack=pack, repeat=repeat,
                    shard=[shard_index, shard_count], shuffle_buffer=shuffle_buffer,
                    eval_fraction=eval_fraction, split=split, label_names=label_names,
                    max_record_chars=max_record_chars)
    return Pipeline(dataset, settings, surveys, weights, label_names, faults, mixer)


# Tasks other than causal LM use a record's first seq_len (+ 1) tokens only. Its content past this many
# characters per token of seq_len is cut before tokenizing, silently: no tokenizer spans 64 characters per
# token, so the tokens used are the same, and a 1 MB chat no longer costs a tokenizer call minutes.
USED_CHARS_PER_TOKEN = 64


def _survey(config, selection: Selection, on_error: str, read_kwargs: dict,
            mentions: MentionPool, cap: dict, task: str, known_labels: list[str] | None) -> _Survey:
    read_stats, tags, labels, records, changed = ReadStats(), set(), set(), [], {}

    def note(change: str, line: int, count: int = 1):
        changed.setdefault(change, [0, line])[0] += count

    for record in selected_records(config, selection, on_error=on_error, stats=read_stats, **read_kwargs):
        try:
            if task == "classification":
                labels.add(_class_label(record, known_labels))
            elif task == "token_classification" and record.kind != "ner":
                raise DataError(record.path, record.line, "token_classification needs 'tokens' + 'tags' records "
                                f"(or a CoNLL file), got {record.kind}")
            elif task == "grpo" and record.kind not in ("prompt", "messages"):
                raise DataError(record.path, record.line, "task grpo needs 'prompt' (or 'messages') records with "
                                f"the fields its rewards read, got {record.kind}")
            elif task != "grpo" and record.kind == "prompt":
                raise DataError(record.path, record.line, "missing field 'completion' (a prompt alone is a "
                                "record for task grpo)")
            elif (task in PREFERENCE_TASKS) != (record.kind == "preference"):
                raise DataError(record.path, record.line, f"task {task} needs " + (
                    f"'prompt' + 'chosen' + 'rejected' records, got {record.kind}" if task in PREFERENCE_TASKS
                    else "records other than preference pairs ('chosen' and 'rejected' are for dpo, orpo, simpo)"))
        except DataError as error:
            if on_error == "raise":
                raise
            read_stats.note_error(error)
            continue
        pieces, change = cap_length(record, cap["max_chars"], split_text=cap["split_text"])
        if change:
            note(change, record.line)
        if cap["split_text"] and record.kind == "text":
            pieces = [part for piece in pieces for part in text_pieces(piece, cap["piece_chars"])]
        if cap["used_chars"]:  # the same tokens: see USED_CHARS_PER_TOKEN
            pieces = [cap_length(piece, cap["used_chars"])[0][0] for piece in pieces]
        for piece in pieces:
            if piece.kind == "ner":
                iob2, repaired = to_iob2(piece.data["tags"])
                if repaired:
                    note("iob2", piece.line, repaired)
                    piece = dataclasses.replace(piece, data={**piece.data, "tags": iob2})
                tags.update(iob2)
                mentions.add(piece.data["tokens"], iob2)
            records.append(record_to_json(piece))
    if not records:
        raise DataError(config.path, 0, "no usable records for this host/split "
                        f"({read_stats.skipped} skipped)")
    _warn_changes(config.path, changed, cap["max_chars"])
    return _Survey(config.path, records, read_stats, tags, labels, changed)


def _warn_changes(path: str, changed: dict, max_chars: int) -> None:
    """One warning per kind of change made to the records as read: never a silent one."""
    limit = f"data.max_record_chars={max_chars:,} characters"
    if "split" in changed:
        count, line = changed["split"]
        warn(f"{path}: {count} text record(s) longer than {limit} (first at line {line}) were split into "
             "pieces of at most that length, each its own document")
    if "truncated" in changed:
        count, line = changed["truncated"]
        warn(f"{path}: {count} record(s) longer than {limit} (first at line {line}) were truncated to it; "
             "raise the limit (0 = none) to keep them whole")
    if "iob2" in changed:
        count, line = changed["iob2"]
        warn(f"{path}: {count} 'I-' tag(s) that start an entity (after 'O' or another type; first at line {line}) "
             "were read as 'B-': NER data is taken as IOB2, which converts IOB1 exactly")


def _class_label(record, known_labels: list[str] | None) -> str:
    """The record's label name; DataError (path:line) if it has none or one the model does not know."""
    try:
        label = label_of(record.data) if record.kind == "text" else None
    except ValueError as e:
        raise DataError(record.path, record.line, str(e)) from None
    if label is None:
        raise DataError(record.path, record.line, f"classification needs 'text' + 'label' records, got {record.kind}")
    if known_labels is not None and label not in known_labels:
        raise DataError(record.path, record.line, f"label {label!r} is not one of the labels {known_labels}")
    return label


class Pipeline:
    """Iterable of batches (dicts of numpy arrays) with resumable position.

    Iterating starts at the current position: after ``set_state`` it continues
    exactly where the saved run stopped. A finite pipeline (``repeat=False``)
    starts over from the beginning on each full pass.
    """

    def __init__(self, dataset: tf.data.Dataset | None, settings: dict, surveys: list[_Survey],
                 weights: np.ndarray, label_names: list[str] | None, faults: stages.Faults,
                 mixer: RowMixer | None = None):
        self._dataset, self.settings, self._surveys = dataset, settings, surveys
        self._faults = faults
        self._weights, self._mixer = weights, mixer  # a mixer: batches drawn on the host (bandit mixing)
        self.label_names = label_names
        self.source_names = [s.name for s in surveys]
        self._batches = 0
        self._examples = np.zeros(len(surveys), np.int64)
        self._tokens = np.zeros(len(surveys), np.int64)

    @property
    def requested_shares(self) -> np.ndarray:
        """The mixture's weights (with bandit mixing: those of the next batch)."""
        return self._weights if self._mixer is None else self._mixer.weights_for(self._batches)

    def set_weights(self, weights, *, from_batch: int) -> None:
        """Bandit mixing: sample with `weights` from batch `from_batch` (0-based) on."""
        if self._mixer is None:
            raise ValueError(f"only data.mixing=bandit changes weights while training; this pipeline mixes "
                             f"{self.settings['mixing']!r}")
        self._mixer.set_weights(weights, from_batch=from_batch)

    def __iter__(self):
        if self._mixer is not None:
            batches = self._mixer.batches()
        else:
            batches = (self._dataset.skip(self._batches) if self._batches else self._dataset).as_numpy_iterator()
        for batch in batches:
            batch = self._pad_batch(batch)
            self._count(batch)
            self._batches += 1
            yield batch
        self._faults.raise_first()  # a stage ended the stream early on bad input
        self._batches = 0  # only finite pipelines get here: the next pass starts over

    def _pad_batch(self, batch: dict) -> dict:
        """Fills the last, short batch of a finite pipeline with padding rows."""
        missing = self.settings["batch_size"] - len(batch["source_id"])
        if missing <= 0:
            return batch
        fill = {"source_id": -1, "labels": IGNORE_LABEL}
        return {k: np.concatenate([v, np.full((missing, *v.shape[1:]), fill.get(k, 0), v.dtype)])
                for k, v in batch.items()}

    def _count(self, batch: dict) -> None:
        sources = batch["source_id"]
        if "positions" in batch:  # an example is a packed document (or chunk)
            starts = sources[(batch["positions"] == 0) & (sources >= 0)]
        else:  # token or text classification, preference pairs: one example per row, its first token
            firsts = sources.reshape(len(sources), -1)[:, 0]
            starts = firsts[firsts >= 0]
        self._examples += np.bincount(starts, minlength=len(self._examples))
        self._tokens += np.bincount(sources[sources >= 0], minlength=len(self._tokens))

    def get_state(self) -> dict:
        state = {"version": STATE_VERSION, "settings": self.settings, "batches": self._batches,
                 "examples": self._examples.tolist(), "tokens": self._tokens.tolist()}
        if self._mixer is not None:
            state["mixer"] = self._mixer.get_state()
        return state

    def set_state(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data pipeline state version {state.get('version')!r} is not "
                             f"{STATE_VERSION}; cannot resume from it")
        changed = sorted(k for k in set(self.settings) | set(state["settings"])
                         if self.settings.get(k) != state["settings"].get(k))
        if changed:
            raise ValueError(f"cannot resume: the data pipeline settings changed ({', '.join(changed)})")
        self._batches = int(state["batches"])
        self._examples = np.asarray(state["examples"], np.int64)
        self._tokens = np.asarray(state["tokens"], np.int64)
        if self._mixer is not None:
            self._mixer.set_state(state["mixer"])

    def stats(self) -> dict:
        """Skipped records and realised per-source shares (the trainer logs these)."""
        def shares(counts):
            total = counts.sum()
            return {n: float(c / total) if total else 0.0 for n, c in zip(self.source_names, counts, strict=False)}

        return {
            "batches": self._batches,
            "skipped": sum(s.read_stats.skipped for s in self._surveys),
            "errors": [e for s in self._surveys for e in s.read_stats.errors],
            "records": {s.name: len(s.records) for s in self._surveys},
            "changed": {s.name: {k: count for k, (count, _) in s.changed.items()} for s in self._surveys if s.changed},
            "requested_share": dict(zip(self.source_names, self.requested_shares.tolist(), strict=False)),
            "examples": dict(zip(self.source_names, self._examples.tolist(), strict=False)),
            "tokens": dict(zip(self.source_names, self._tokens.tolist(), strict=False)),
            "example_share": shares(self._examples),
            "token_share": shares(self._tokens),
        }

    def word_tags(self, labels, predictions):
        """Word-level (true, predicted) tag lists for seqeval (token classification)."""
        return word_tags(labels, predictions, self.label_names)


def build_from_config(config: DataConfig, tokenizer, *, task: str, seq_len: int, batch_size: int,
                      seed: int, split: str = "train", **kwargs) -> Pipeline | None:
    """The train, eval or test pipeline a :class:`DataConfig` describes (None: no such data)."""
    common = dict(task=task, seq_len=seq_len, batch_size=batch_size, seed=seed, pack=config.pack,
                  on_error=config.on_error, tfds_data_dir=config.tfds_data_dir or None,
                  max_record_chars=config.max_record_chars, **kwargs)
    if split == "train":
        held_out = config.eval_fraction if not config.eval else 0.0
        return build_pipeline(config.train, tokenizer, mixing=config.mixing,
                              temperature=config.temperature, augment=config.augment,
                              shuffle_buffer=config.shuffle_buffer, eval_fraction=held_out,
                              split="train" if held_out else "all", **common)
    if split == "test":
        return build_pipeline(config.test, tokenizer, repeat=False, **common) if config.test else None
    if split != "eval":
        raise ValueError(f"split must be 'train', 'eval' or 'test', got {split!r}")
    if config.eval:
        return build_pipeline(config.eval, tokenizer, repeat=False, **common)
    if config.eval_fraction > 0:
        return build_pipeline(config.train, tokenizer, repeat=False, split="eval",
                              eval_fraction=config.eval_fraction, **common)
    return None
