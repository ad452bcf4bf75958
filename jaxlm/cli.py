"""The `jaxlm` command: `jaxlm COMMAND [options]`, one subcommand per row of COMMANDS.

Each row names the function that runs the subcommand, as "module:function", and is imported
only when that subcommand runs, so `jaxlm --help` stays fast and `jaxlm generate` never loads
the training stack. The function is `main(argv, prog=...) -> int`, wrapped in
`jaxlm.errors.exit_codes`; it parses its own options (so `jaxlm train --help` is the
subcommand's help) and calls a library function that tests call too. `python -m jaxlm.train`
and the other `python -m jaxlm.<command>` modules run the same functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from importlib import metadata

from jaxlm import cpu_flags
from jaxlm.errors import BAD_INPUT


@dataclasses.dataclass(frozen=True)
class Command:
    target: str  # "module:function"
    help: str  # one line for `jaxlm --help`
    tcmalloc: bool = False  # with JAXLM_MALLOC=tcmalloc, reruns itself under it (cpu_flags.relaunch_with_tcmalloc)


COMMANDS = {
    "train": Command("jaxlm.train.cli:main", "fine-tune a model: a YAML preset plus dotted.key=value overrides",
                     tcmalloc=True),
    "generate": Command("jaxlm.sampling.cli:main", "generate text from prompts with an HF folder or .gguf file"),
    "convert": Command("jaxlm.convert:main", "convert a .gguf file, HF folder or run to an HF folder or .gguf file"),
    "eval": Command("jaxlm.eval.cli:main", "score a model on data: loss, generation, entity and class metrics"),
    "audit": Command("jaxlm.audit.cli:main", "audit a training data file: duplicates, contamination, bias, ..."),
    "serve": Command("jaxlm.serve.cli:main", "serve a model over OpenAI's HTTP API, batching requests as they come"),
    "synth": Command("jaxlm.synth.cli:main", "make SFT data with a model: self-instruct, grounded, back-translate"),
}

EPILOG = """Run `jaxlm COMMAND --help` for a command's options.
Exit codes (every command): 0 done, 2 bad input or config (one line naming the file:line or key),
3 stopped by a gate or a non-finite loss, 130 interrupted."""


def build_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    table = "\n".join(f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="jaxlm", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Fine-tune Hugging Face language models with JAX, generate with them, convert them,\n"
                    f"audit their training data, and make new data with a model.\n\n"
                    f"commands:\n{table}", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"jaxlm {_version()}")
    parser.add_argument("command", choices=COMMANDS, help="the command to run; its options follow it")
    return parser


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv[:1])  # --help, --version, or a usage error naming the commands
        return BAD_INPUT  # not reached: parse_args exits
    name, rest = argv[0], argv[1:]
    if from_command_line and COMMANDS[name].tcmalloc:
        cpu_flags.relaunch_with_tcmalloc()  # returns unless JAXLM_MALLOC=tcmalloc asks for a rerun
    return load(COMMANDS[name].target)(rest, prog=f"jaxlm {name}")


def load(target: str):
    """The function a "module:function" row names (its module is imported now, not before)."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _version() -> str:
    try:
        return metadata.version("jaxlm")
    except metadata.PackageNotFoundError:
        return "(not installed)"
