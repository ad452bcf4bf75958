"""Fine-tune a model: `jaxlm train` or `python -m jaxlm.train [--config configs/NAME.yaml] [dotted.key=value ...]`.

The config (YAML preset, then overrides) is checked in full, against this machine's devices
and the input paths too, before a model is loaded or a record read.
"""

from __future__ import annotations

import argparse
import contextlib

from jaxlm.errors import exit_codes
from jaxlm.outputs import one_writer
from jaxlm.train.config import describe, load_config

EPILOG = """With no arguments, runs the embedded default: LoRA SFT of SmolLM2-135M-Instruct on the
chatterbot and chit-chat conversations, evaluated on their held-out split.
Re-running with the same output_dir resumes from its latest checkpoint.

On a CPU, train.compute_dtype=bfloat16 is the faster setting where the CPU multiplies bf16 natively
(AVX512-BF16 or AMX; on the 2-core CI machine full fine-tuning took 0.66x and LoRA 0.62x float32's step
time); on a CPU without bf16 instructions XLA converts to float32 first, and jaxlm warns that float32 is
likely faster there. JAXLM_MALLOC=tcmalloc (an environment variable: the allocator is chosen before
the process starts, so `jaxlm train` reruns itself under it) makes CPU steps faster, at the cost of
host memory: on a 2-core Intel Xeon full fine-tuning of SmolLM2-135M ran 147-153 instead of 107-126
tokens/s, with a peak of 6.4 instead of 4.4 GiB (glibc maps each step's temporaries afresh; tcmalloc
keeps them).

Exit codes: 0 done, 2 bad config or data (one line naming the key or file:line),
3 training stopped (a non-finite loss), 130 interrupted. With --distributed, a process that
fails stops the others, which exit with its code after printing "stopped: process N: <reason>".

Keys and defaults:
"""


def build_parser(prog: str = "python -m jaxlm.train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, epilog=EPILOG + describe(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset, e.g. configs/sft_lora.yaml")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or status lines")
    parser.add_argument("--dry-run", action="store_true",
                        help="compile the train step on abstract shapes and print its memory per device and FLOPs "
                             "(will it fit?); reads no weights or data, trains nothing, writes nothing")
    parser.add_argument("--distributed", action="store_true",
                        help="one of several processes (hosts) that train together: run the same command on "
                             "each. They are found from the TPU VM, SLURM, Open MPI or Kubernetes environment, "
                             "or from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; they wait "
                             "JAXLM_DISTRIBUTED_TIMEOUT seconds (default 300) for each other. Process 0 "
                             "writes the outputs; checkpoint.dir must be a path every host sees")
    parser.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="e.g. train.steps=100")
    return parser


@exit_codes
def main(argv: list[str] | None = None, prog: str = "python -m jaxlm.train") -> int:
    args = build_parser(prog).parse_args(argv)
    if not args.distributed:
        return run(args)
    from jaxlm.compute import distributed

    print(distributed.initialize(), flush=True)  # before anything touches a device
    with distributed.stop_all_on_error():  # one process failing ends them all, with its reason
        return run(args)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)

    import jax

    cfg.check_environment(jax.device_count())  # before the slow imports and loads below
    if args.dry_run:  # no data stack, no weights: only the model's shapes and the compiled step
        from jaxlm.train import dry_run

        print(dry_run.describe(dry_run.dry_run(cfg), cfg))
        return 0
    from jaxlm.compute import distributed
    from jaxlm.train.loop import train

    # process 0 alone writes output_dir (distributed.py), so it alone holds the lock on it
    with one_writer(cfg.output_dir) if distributed.is_writer() else contextlib.nullcontext():
        result = train(cfg, progress=not args.no_progress)
    print(f"{result.stop_reason} at step {result.step}; outputs in {result.output_dir}")
    return 0
