"""`python -m jaxlm.train [--config configs/NAME.yaml] [dotted.key=value ...]`."""

from __future__ import annotations

import argparse
import sys

from jaxlm.train.config import ConfigError, describe, load_config

EPILOG = """With no arguments, runs the embedded default: LoRA SFT of SmolLM2-135M-Instruct on the
chatterbot and chit-chat conversations, evaluated on their held-out split.
Re-running with the same output_dir resumes from its latest checkpoint.

Exit codes: 0 done, 2 bad config or data (one-line message), 3 training stopped (e.g. NaN loss).

Keys and defaults:
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxlm.train", description=__doc__,
                                     epilog=EPILOG + describe(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset, e.g. configs/sft_lora.yaml")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or status lines")
    parser.add_argument("--dry-run", action="store_true",
                        help="compile the train step on abstract shapes and print its memory per device and FLOPs; "
                             "loads no weights or data, trains nothing, writes nothing")
    parser.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="e.g. train.steps=100")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2

    if args.dry_run:
        from jaxlm.hf.errors import CheckpointError
        from jaxlm.train import dry_run

        try:
            print(dry_run.describe(dry_run.dry_run(cfg), cfg))
        except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0

    from jaxlm.data import DataError
    from jaxlm.train.loop import TrainingError, train

    try:
        result = train(cfg, progress=not args.no_progress)
    except DataError as e:
        print(f"data error: {e}", file=sys.stderr)
        return 2
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 3
    print(f"{result.stop_reason} at step {result.step}; outputs in {result.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
