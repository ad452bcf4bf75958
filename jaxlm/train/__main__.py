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
    parser.add_argument("--distributed", action="store_true",
                        help="one of several processes (hosts) training together: run the same command on "
                             "each; they are found from the TPU VM / SLURM / Open MPI environment, or from "
                             "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID")
    parser.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="e.g. train.steps=100")
    args = parser.parse_args(argv)
    if args.distributed:
        from jaxlm.train import distributed

        try:
            print(distributed.initialize(), flush=True)
        except distributed.DistributedError as e:
            print(e, file=sys.stderr)
            return 2
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        return _fail(f"config error: {e}", 2, args.distributed)

    from jaxlm.data import DataError
    from jaxlm.train.loop import TrainingError, train

    try:
        result = train(cfg, progress=not args.no_progress)
    except DataError as e:
        return _fail(f"data error: {e}", 2, args.distributed)
    except (ConfigError, FileNotFoundError) as e:
        return _fail(f"error: {e}", 2, args.distributed)
    except TrainingError as e:
        return _fail(f"training stopped: {e}", 3, args.distributed)
    except Exception as e:
        if not args.distributed:
            raise
        import traceback

        traceback.print_exc()
        return _fail(f"{type(e).__name__}: {e}", 1, True)
    print(f"{result.stop_reason} at step {result.step}; outputs in {result.output_dir}")
    return 0


def _fail(message: str, code: int, distributed: bool) -> int:
    """One line on stderr and the exit code; with --distributed, every other process stops too."""
    print(message, file=sys.stderr, flush=True)
    if distributed:
        from jaxlm.train.distributed import stop_all

        stop_all(message, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
