"""`jaxlm synth` / `python -m jaxlm.synth MODE ...`: command line over `runner.run_synth`.

Exit status (jaxlm.errors): 0 done; 2 bad input or options (one line naming the file:line or option).
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxlm.errors import exit_codes
from jaxlm.outputs import one_writer
from jaxlm.synth.config import (
    DEFAULT_CORPUS,
    ENGINES,
    LANGUAGES,
    FilterConfig,
    SynthConfig,
    describe_filters,
    set_filter,
)

_DESCRIPTION = """\
Make fine-tuning data with a model, filter it, and write to OUT:
  data.jsonl      kept records, in the messages format the trainer reads (preferences:
                  {prompt, chosen, rejected} pairs for task dpo), each with
                  "provenance": mode, model, sampling, round, seed ids / passage id,
                  filter scores, prompt_tokens, generated_tokens, generation_seconds
  rejected.jsonl  rejected candidates, with the filter that rejected each ("rejected_by")
  summary.json    generated, kept, rejected per filter, acceptance rate, new tokens/s, wall time
  state.json      the position of the run: rerun the same command to resume after a stop

modes:
  self-instruct   grow tasks from seed tasks, round by round (Wang et al. 2023)
  grounded        questions and answers written from passages of a corpus
  back-translate  rewrite the user turns of a dataset through a pivot language
  preferences     chosen/rejected answers to your prompts, ranked by a judge (task dpo)
"""

_EPILOG = """\
examples:
  python -m jaxlm.synth self-instruct --num 200 --out synth/
  python -m jaxlm.synth grounded --relevant-to "birds and their habitats" --num 100 --out grounded/
  python -m jaxlm.synth back-translate --data train.jsonl --pivot fr --out bt/ --filter min_chrf=30
  python -m jaxlm.synth self-instruct --num 1000 --engine ray --workers 4 --out big/   # RAY_ADDRESS or local
  python -m jaxlm.synth preferences --prompts qa.jsonl --num-candidates 4 --judge rouge-l --out pairs/

exit status: 0 done; 2 bad input or options; 130 interrupted (rerun the command to resume).
"""


def _common(parser: argparse.ArgumentParser) -> None:
    defaults = SynthConfig(mode="", out="")
    group = parser.add_argument_group("common options")
    group.add_argument("--out", metavar="DIR", required=True, help="output folder (a rerun resumes in it)")
    group.add_argument("--model", default=defaults.model,
                       help="'smollm2' (default: the shipped SmolLM2-135M-Instruct GGUF), an HF folder or a .gguf")
    group.add_argument("--quantize", choices=["int8"],
                       help="store the model's linear weights as int8: faster generation on CPU (default: float)")
    group.add_argument("--num", type=int, default=defaults.num, help=f"records to keep (default {defaults.num})")
    group.add_argument("--batch-size", type=int, default=defaults.batch_size,
                       help=f"prompts generated together (default {defaults.batch_size})")
    group.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                       help=f"token limit of an answer or translation (default {defaults.max_new_tokens})")
    group.add_argument("--instruction-tokens", type=int, default=defaults.instruction_tokens,
                       help=f"token limit of a proposed task or question (default {defaults.instruction_tokens})")
    group.add_argument("--temperature", type=float, default=defaults.temperature,
                       help=f"sampling temperature, 0 = greedy (default {defaults.temperature})")
    group.add_argument("--top-p", type=float, default=defaults.top_p,
                       help=f"nucleus sampling (default {defaults.top_p})")
    group.add_argument("--seed", type=int, default=defaults.seed, help="run seed: same seed, same data (default 0)")
    group.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: this process; ray: Ray actors on the cluster in RAY_ADDRESS, or a local one; "
                       "openai: an OpenAI-compatible server (jaxlm serve, llama.cpp, vLLM) at --base-url, "
                       "--model naming the model it serves")
    group.add_argument("--workers", type=int, default=defaults.workers,
                       help=f"Ray actors, each loading the model once (default {defaults.workers})")
    group.add_argument("--base-url", metavar="URL", help="--engine openai: the server, e.g. http://localhost:8000/v1")
    group.add_argument("--api-key-env", metavar="VAR", help="--engine openai: the environment variable holding the "
                       "API key (default: no key)")
    group.add_argument("--concurrency", type=int, default=defaults.concurrency,
                       help=f"--engine openai: requests in flight at once, within a batch (default "
                       f"{defaults.concurrency}; keep --batch-size at least as large)")
    group.add_argument("--filter", metavar="KEY=VALUE", action="append", default=[], dest="filter_settings",
                       help="set a filter threshold (repeatable; keys listed below)")
    group.add_argument("--no-filter", metavar="NAME", action="append", default=[], dest="disabled",
                       help="turn a filter off (repeatable)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser(prog: str = "python -m jaxlm.synth") -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=prog, description=_DESCRIPTION, epilog=_EPILOG, formatter_class=formatter)
    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    defaults = SynthConfig(mode="", out="")

    self_instruct = modes.add_parser(
        "self-instruct", help="grow tasks from seed tasks", formatter_class=formatter, epilog=describe_filters(),
        description="Each round the model sees a list of tasks sampled from the pool (seed tasks, and from "
                    "round 2 some generated ones), writes a new task, then answers it. Survivors of the "
                    "filters join the pool (Self-Instruct, Wang et al. 2023).")
    self_instruct.add_argument("--seeds", metavar="FILE",
                               help="seed tasks, prompt/completion or messages JSONL (default: the shipped 66 "
                                    "tasks, jaxlm/synth/data/seed_tasks.jsonl)")
    self_instruct.add_argument("--rounds", type=int, default=defaults.rounds,
                               help=f"rounds to spread --num over (default {defaults.rounds}); more follow "
                                    "while short of --num and a round still keeps something")
    self_instruct.add_argument("--examples-per-prompt", type=int, default=defaults.examples_per_prompt,
                               help=f"tasks shown to the model per proposal (default {defaults.examples_per_prompt})")
    _common(self_instruct)

    grounded = modes.add_parser(
        "grounded", help="questions and answers from passages", formatter_class=formatter, epilog=describe_filters(),
        description="For each passage of a corpus the model writes a question, then answers it with the passage "
                    "in view. Records keep the passage and its id; answers must be supported by the passage.")
    grounded.add_argument("--corpus", default=DEFAULT_CORPUS,
                          help=f"passages: any source the data pipeline reads (default {DEFAULT_CORPUS})")
    grounded.add_argument("--relevant-to", metavar="TOPIC_OR_FILE",
                          help="take the passages most similar (MiniLM embeddings) to this topic, or to the "
                               "tasks of this file, first")
    grounded.add_argument("--passage-words", type=int, default=defaults.passage_words,
                          help=f"cut passages to this many words (default {defaults.passage_words})")
    grounded.add_argument("--closed-book", action="store_true",
                          help="leave the passage out of the user turn (it stays in the record's 'passage')")
    _common(grounded)

    back = modes.add_parser(
        "back-translate", help="rewrite user turns through a pivot language", formatter_class=formatter,
        epilog=describe_filters(),
        description="Each user turn goes to the pivot language and back with the model; answers are kept. "
                    "Round-trip chrF (sacrebleu) is recorded and filtered by a floor (min_chrf).")
    back.add_argument("--data", required=True, help="dataset whose user turns are rewritten (any source)")
    back.add_argument("--pivot", default=defaults.pivot, help=f"pivot language: {', '.join(LANGUAGES)} (default fr)")
    _common(back)
    _preferences_parser(modes, formatter)
    return parser


def _preferences_parser(modes, formatter) -> None:
    defaults = SynthConfig(mode="", out="")
    parser = modes.add_parser(
        "preferences", help="chosen/rejected pairs ranked by a judge", formatter_class=formatter,
        epilog=describe_filters(),
        description="For each prompt the model samples --num-candidates answers and --judge scores them: the best "
                    "becomes 'chosen', the worst 'rejected' (a prompt whose best and worst tie is skipped and "
                    "counted under 'tie'). data.jsonl holds {prompt, chosen, rejected, provenance} records, TRL's "
                    "standard form for a string prompt and its conversational form for messages, which task dpo "
                    "and jaxlm audit read; provenance keeps every candidate and its score. --num caps the pairs "
                    "kept (give at least the number of prompts to answer them all).")
    parser.add_argument("--prompts", required=True, metavar="DATA",
                        help="the prompts, any source the data pipeline reads (JSONL, Parquet, CSV...): prompt "
                             "records (a reference answer in --reference-field), prompt/completion (the completion "
                             "is the reference) or messages (a final assistant turn is the reference)")
    parser.add_argument("--num-candidates", metavar="K", type=int, default=defaults.num_candidates,
                        help=f"answers sampled per prompt (default {defaults.num_candidates}; needs --temperature > 0)")
    parser.add_argument("--judge", default=defaults.judge, metavar="JUDGE",
                        help="filters (default): the share of the filter checks below an answer passes; rouge-l or "
                             "chrf: its ROUGE-L F1 or chrF against the reference answer; PATH: the folder of a "
                             "sequence classifier trained by jaxlm (task: classification), its probability of "
                             "--judge-label given the answer's text")
    parser.add_argument("--judge-label", metavar="NAME",
                        help="--judge PATH: the label that means a good answer (default: label 1 of two)")
    parser.add_argument("--chat", action="store_true",
                        help="send a string prompt as one user message through the chat template (an instruct "
                             "model given raw text often answers nothing); the pairs are then in conversational form")
    parser.add_argument("--reference-field", default=defaults.reference_field, metavar="FIELD",
                        help=f"the field of a prompt record holding its reference answer (default "
                             f"{defaults.reference_field!r})")
    _common(parser)


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    filters = FilterConfig(disabled=tuple(args.disabled))
    for assignment in args.filter_settings:
        set_filter(filters, assignment)
    fields = {name: getattr(args, name) for name in SynthConfig.__dataclass_fields__
              if name not in ("mode", "filters", "progress") and hasattr(args, name)}
    return SynthConfig(mode=args.mode, filters=filters, progress=not args.quiet, **fields)


@exit_codes
def main(argv: list[str] | None = None, prog: str = "python -m jaxlm.synth") -> int:
    args = build_parser(prog).parse_args(argv)
    from jaxlm.synth.runner import run_synth  # heavy imports after --help

    with one_writer(args.out):
        summary = run_synth(config_from_args(args))  # SynthError, DataError, CheckpointError: exit 2
    print(f"kept {summary['kept']} of {summary['generated']} generated "
          f"({100 * summary['acceptance_rate']:.0f}%); {summary['new_tokens']} new tokens"
          + (f" at {summary['new_tokens_per_s']:.0f} tokens/s" if summary["new_tokens_per_s"] else "")
          + f"; {os.path.join(args.out, 'data.jsonl')}")
    if not summary["complete"] and args.mode == "preferences":
        print(f"warning: {summary['kept']} pairs from {summary['generated']} prompts, fewer than --num {args.num}: "
              f"the prompts ran out ({summary['rejected']['tie']} tied, {summary['rejected']['empty']} without two "
              "answers)", file=sys.stderr)
    elif not summary["complete"]:
        print(f"warning: {summary['kept']} records kept, fewer than --num {args.num}: the source ran out or "
              "rounds stopped keeping anything (rerun with more --rounds, or looser filters, to continue)",
              file=sys.stderr)
    return 0
