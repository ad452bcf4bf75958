"""Several optimizer steps in one compiled call against one a call, in one process (issue 31).

    PYTHONPATH=. python scripts/experiments/exp_steps_per_call.py [--mode full|lora] [--rounds 6]

Builds jaxlm's train engine for SmolLM2-135M 4x256 float32 (the shipped GGUF) as `jaxlm train` does on this
machine, compiles both of its programs (one step a call, and `train.steps_per_call` steps a call: 5 with the
default intervals on a CPU), then alternates rounds of k steps one a call and one call of k steps, so the
machine's drift hits both alike. Prints each side's median seconds per step, its kernel (system) CPU seconds
per step (the page faults of XLA:CPU's temporaries, mapped afresh at every call), and the speed ratio.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import interleave  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["full", "lora"], default="lora")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    import jax

    engine, data = interleave.smollm2_engine(16 if args.mode == "lora" else 0)
    k = engine.steps_per_call
    engine.compile(data[0])
    jax.block_until_ready(engine.step(data[0]))  # warm-up

    times = interleave.alternate({"one a call": lambda: jax.block_until_ready([engine.step(b) for b in data]),
                                  f"{k} a call": lambda: jax.block_until_ready(engine.steps(data))},
                                 args.rounds, k)
    one, several = interleave.report(times, 4 * 256, f"[{args.mode}] ")
    print(f"RATIO {args.mode}: {k} steps a call / one a call, speed {one / several:.3f}")


if __name__ == "__main__":
    main()
