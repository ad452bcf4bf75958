"""`jaxlm audit` / `python -m jaxlm.audit`: command line over `pipeline.run_audit`.

Exit status (jaxlm.errors): 0 audit done and every gate passed; 2 bad input or options (the
message names the file and line); 3 the audit ran but a --fail-on gate failed.
Option defaults are AuditConfig's, so the command and the library cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from jaxlm.audit.config import AuditConfig
from jaxlm.audit.flags import REASONS
from jaxlm.errors import Stopped, exit_codes
from jaxlm.outputs import one_writer

DEFAULTS = {f.name: f.default for f in dataclasses.fields(AuditConfig) if f.default is not dataclasses.MISSING}


class GateFailed(Stopped):
    """The audit ran, but a --fail-on threshold was crossed."""

    label = "gate failed"

_DESCRIPTION = """\
Audit a training data file for risks before fine-tuning on it, and write:
  OUT/report.json    every figure, under stable keys (documented in jaxlm/audit/REPORT.md)
  OUT/report.html    a self-contained page: figures, plots, the worst records per problem
  OUT/flagged.jsonl  one line per flagged record: {index, line, reasons, details, record}
  OUT/clean.jsonl    the records minus those flagged with a --remove reason (normalised form)

DATA is read like the trainer reads it: JSONL with messages, prompt/completion,
text (optionally with a "label"), or tokens/tags; CoNLL token<TAB>tag files; plain text;
the same fields as columns of Parquet, Arrow or CSV files or a `datasets` save_to_disk folder.
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
exit status: 0 ok; 2 bad input or options; 3 a --fail-on gate failed; 130 interrupted.
"""


def build_parser(prog: str = "python -m jaxlm.audit") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", metavar="DATA", help="file or folder to audit")
    parser.add_argument("--reference", metavar="REAL", action="append", default=[], dest="references",
                        help="real corpus that synthetic DATA must not copy long spans from (repeatable)")
    parser.add_argument("--eval", metavar="EVAL", action="append", default=[], dest="evals",
                        help="evaluation set that DATA must not overlap (repeatable)")
    parser.add_argument("--model", metavar="PATH_OR_GGUF", default=_shown(DEFAULTS["model"]),
                        help="causal LM for perplexity: 'smollm2' (the shipped SmolLM2-135M GGUF), "
                             "an HF folder or .gguf file, or 'none' to skip (default: %(default)s)")
    parser.add_argument("--embedder", default=_shown(DEFAULTS["embedder"]),
                        help="sentence embeddings for topic clusters: 'minilm' (shipped), 'tfidf' (no model), "
                             "an HF BERT folder, or 'none' to skip (default: %(default)s)")
    parser.add_argument("--out", metavar="DIR", default=DEFAULTS["out"], help="output folder (default: %(default)s)")
    parser.add_argument("--fail-on", metavar="KEY>VALUE", action="append", default=[], dest="gates",
                        help="exit 3 when a report.json figure crosses the threshold, e.g. "
                             "duplication.exact_fraction>0.05 (operators > >= < <= ==; repeatable; "
                             "a figure not measured in the run fails its gate)")
    parser.add_argument("--remove", metavar="REASON,...", default=",".join(DEFAULTS["remove"]) or "none",
                        help="flag reasons whose records clean.jsonl drops ('none' keeps every record; "
                             "default: %(default)s)")
    parser.add_argument("--near-duplicate-threshold", type=float, default=DEFAULTS["near_duplicate_threshold"],
                        metavar="J", help=f"Jaccard similarity of word {DEFAULTS['shingle_words']}-gram shingles "
                                          "for near duplicates (default: %(default)s)")
    parser.add_argument("--ngram", type=int, default=DEFAULTS["ngram"], metavar="N",
                        help="span length in words for contamination and reference copying (default: %(default)s)")
    parser.add_argument("--max-perplexity", type=float, default=DEFAULTS["max_perplexity"], metavar="P",
                        help="flag records above this perplexity (default: outliers of the file, "
                             "median + 3.5 MADs of log perplexity)")
    parser.add_argument("--perplexity-tokens", type=int, default=DEFAULTS["perplexity_tokens"], metavar="T",
                        help="score the first T tokens of each record (default: %(default)s)")
    parser.add_argument("--self-bleu-sample", type=int, default=DEFAULTS["self_bleu_sample"], metavar="N",
                        help="records sampled for self-BLEU (quadratic cost; default: %(default)s)")
    parser.add_argument("--topic-sample", type=int, default=DEFAULTS["topic_sample"], metavar="N",
                        help="records sampled for topic clustering (default: %(default)s)")
    parser.add_argument("--terms", metavar="JSON", default=DEFAULTS["terms"],
                        help="demographic term groups (default: jaxlm/audit/data/demographic_terms.json)")
    parser.add_argument("--skip-bad", action="store_true", default=DEFAULTS["skip_bad"],
                        help="skip unreadable records (counted in report.json) instead of stopping")
    parser.add_argument("--engine", choices=("local", "ray"), default=DEFAULTS["engine"],
                        help="local: this process; ray: measure each file of a DATA folder on Ray workers "
                             "(the cluster in RAY_ADDRESS, or a local one), then merge: the same report "
                             "(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=DEFAULTS["workers"], metavar="N",
                        help="Ray workers, each loading the perplexity model once (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", default=not DEFAULTS["progress"], help="no progress bars")
    return parser


def _shown(value: str | None) -> str:
    return "none" if value is None else value


def _given(text: str) -> str | None:
    return None if text == "none" else text


def config_from_args(args: argparse.Namespace) -> AuditConfig:
    remove = () if args.remove.strip() in ("", "none") else tuple(
        r.strip() for r in args.remove.split(",") if r.strip())
    return AuditConfig(
        data=args.data, out=args.out, references=args.references, evals=args.evals,
        model=_given(args.model), embedder=_given(args.embedder), remove=remove, gates=args.gates,
        near_duplicate_threshold=args.near_duplicate_threshold, ngram=args.ngram,
        max_perplexity=args.max_perplexity, perplexity_tokens=args.perplexity_tokens,
        self_bleu_sample=args.self_bleu_sample, topic_sample=args.topic_sample, terms=args.terms,
        skip_bad=args.skip_bad, progress=not args.quiet, engine=args.engine, workers=args.workers,
    )


@exit_codes
def main(argv: list[str] | None = None, prog: str = "python -m jaxlm.audit") -> int:
    args = build_parser(prog).parse_args(argv)
    from jaxlm.audit.pipeline import run_audit  # heavy imports after --help

    with one_writer(args.out):
        result = run_audit(config_from_args(args))  # AuditError, DataError, CheckpointError: exit 2
    summary = result.report["flags"]
    print(f"audited {result.report['input']['records']} records: {summary['flagged_records']} flagged, "
          f"{summary['removed_records']} removed; report: {os.path.join(args.out, 'report.html')}")
    if result.failed_gates:
        raise GateFailed("; ".join(f"{gate['gate']} (value: {gate['value']})" for gate in result.failed_gates))
    return 0
