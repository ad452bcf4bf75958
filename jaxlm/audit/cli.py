"""`python -m jaxlm.audit`: command line over `pipeline.run_audit`.

Exit status: 0 audit done and every gate passed; 1 bad input or options (the
message names the file and line); 3 the audit ran but a --fail-on gate failed.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxlm.audit.config import AuditConfig, AuditError
from jaxlm.audit.flags import DEFAULT_REMOVE, REASONS

EXIT_BAD_INPUT = 1
EXIT_GATE_FAILED = 3

_DESCRIPTION = """\
Audit a training data file for risks before fine-tuning on it, and write:
  OUT/report.json    every figure, under stable keys (documented in jaxlm/audit/REPORT.md)
  OUT/report.html    a self-contained page: figures, plots, the worst records per problem
  OUT/flagged.jsonl  one line per flagged record: {index, line, reasons, details, record}
  OUT/clean.jsonl    the records minus those flagged with a --remove reason (normalised form)

DATA is read like the trainer reads it: JSONL with messages, prompt/completion,
text (optionally with a "label"), or tokens/tags; CoNLL token<TAB>tag files; plain text.
The file is streamed (three passes): memory does not hold the records.

What is measured (section of report.json):
  duplication     exact and near duplicates (MinHash LSH, word 5-grams, Jaccard >= 0.8)
  contamination   records sharing a 13-word span (or a whole short record) with --eval sets
  authenticity    perplexity under --model; long spans copied from --reference corpora;
                  support of a grounded answer by the record's "passage" field
  consistency     repeated n-grams, distinct-1/2, self-BLEU, lengths, encoding problems,
                  the same prompt with materially different answers
  bias            demographic term counts and the AFINN sentiment of their contexts,
                  profanity lexicon rate (lexicon screens, not verdicts)
  labels          label distribution, same input with different labels, invalid BIO
  diversity       vocabulary, topic clusters of sentence embeddings, share per source
  generation      tokens/s and acceptance rate from records' provenance fields

Flag reasons:
""" + "\n".join(f"  {reason:<19}{meaning}" for reason, meaning in REASONS.items())

_EPILOG = """\
examples:
  python -m jaxlm.audit train.jsonl --eval test.jsonl --out audit/
  python -m jaxlm.audit synth.jsonl --reference real.jsonl --model none \\
      --fail-on 'duplication.exact_fraction>0.05' --fail-on 'contamination.contaminated_records>0'
  python -m jaxlm.audit ner.conll --model none --embedder none --remove invalid_bio,label_conflict

Quote --fail-on arguments: an unquoted '>' is a shell redirection.
exit status: 0 ok; 1 bad input or options; 3 a --fail-on gate failed.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxlm.audit", description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", metavar="DATA", help="file or folder to audit")
    parser.add_argument("--reference", metavar="REAL", action="append", default=[],
                        help="real corpus that synthetic DATA must not copy long spans from (repeatable)")
    parser.add_argument("--eval", metavar="EVAL", action="append", default=[], dest="evals",
                        help="evaluation set that DATA must not overlap (repeatable)")
    parser.add_argument("--model", metavar="PATH_OR_GGUF", default="smollm2",
                        help="causal LM for perplexity: 'smollm2' (default, the shipped "
                             "SmolLM2-135M GGUF), an HF folder or .gguf file, or 'none' to skip")
    parser.add_argument("--embedder", default="minilm",
                        help="sentence embeddings for topic clusters: 'minilm' (default, shipped), "
                             "'tfidf' (no model), an HF BERT folder, or 'none' to skip")
    parser.add_argument("--out", metavar="DIR", default="audit", help="output folder (default: audit)")
    parser.add_argument("--fail-on", metavar="KEY>VALUE", action="append", default=[], dest="gates",
                        help="exit 3 when a report.json figure crosses the threshold, e.g. "
                             "duplication.exact_fraction>0.05 (operators > >= < <= ==; repeatable; "
                             "a figure not measured in the run fails its gate)")
    parser.add_argument("--remove", metavar="REASON,...", default=",".join(DEFAULT_REMOVE),
                        help=f"flag reasons whose records clean.jsonl drops (default: "
                             f"{','.join(DEFAULT_REMOVE)}; 'none' keeps every record)")
    parser.add_argument("--near-duplicate-threshold", type=float, default=0.8, metavar="J",
                        help="Jaccard similarity of word 5-gram shingles for near duplicates (default 0.8)")
    parser.add_argument("--ngram", type=int, default=13, metavar="N",
                        help="span length in words for contamination and reference copying (default 13)")
    parser.add_argument("--max-perplexity", type=float, default=None, metavar="P",
                        help="flag records above this perplexity (default: outliers of the file, "
                             "median + 3.5 MADs of log perplexity)")
    parser.add_argument("--perplexity-tokens", type=int, default=256, metavar="T",
                        help="score the first T tokens of each record (default 256)")
    parser.add_argument("--self-bleu-sample", type=int, default=100, metavar="N",
                        help="records sampled for self-BLEU (quadratic cost; default 100)")
    parser.add_argument("--topic-sample", type=int, default=1000, metavar="N",
                        help="records sampled for topic clustering (default 1000)")
    parser.add_argument("--terms", metavar="JSON", default=None,
                        help="demographic term groups (default: jaxlm/audit/data/demographic_terms.json)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable records (counted in report.json) instead of stopping")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process; ray: measure each file of a DATA folder on Ray workers "
                             "(the cluster in RAY_ADDRESS, or a local one), then merge: the same report")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="Ray workers, each loading the perplexity model once (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def config_from_args(args: argparse.Namespace) -> AuditConfig:
    remove = () if args.remove.strip() in ("", "none") else tuple(
        r.strip() for r in args.remove.split(",") if r.strip())
    return AuditConfig(
        data=args.data, out=args.out, references=args.reference, evals=args.evals,
        model=None if args.model == "none" else args.model,
        embedder=None if args.embedder == "none" else args.embedder,
        remove=remove, gates=args.gates, near_duplicate_threshold=args.near_duplicate_threshold,
        ngram=args.ngram, max_perplexity=args.max_perplexity, perplexity_tokens=args.perplexity_tokens,
        self_bleu_sample=args.self_bleu_sample, topic_sample=args.topic_sample, terms=args.terms,
        skip_bad=args.skip_bad, progress=not args.quiet, engine=args.engine, workers=args.workers,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jaxlm.audit.pipeline import run_audit  # heavy imports after --help
    from jaxlm.data.records import DataError
    from jaxlm.hf.errors import CheckpointError

    try:
        result = run_audit(config_from_args(args))
    except (AuditError, DataError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    summary = result.report["flags"]
    print(f"audited {result.report['input']['records']} records: {summary['flagged_records']} flagged, "
          f"{summary['removed_records']} removed; report: {os.path.join(args.out, 'report.html')}")
    for gate in result.failed_gates:
        print(f"gate failed: {gate['gate']} (value: {gate['value']})", file=sys.stderr)
    return EXIT_GATE_FAILED if result.failed_gates else 0
