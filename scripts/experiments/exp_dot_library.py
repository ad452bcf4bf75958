"""The float32 matmuls of SmolLM2-135M's 4x256 train step, XLA:CPU against torch, shape by shape (issue 31).

    PYTHONPATH=. python scripts/experiments/exp_dot_library.py [--rounds 7] [--threads 2]

Each shape is one [m, k] x [k, n] product the step runs (forward, the input gradient and the kernel gradient of
every projection and of the tied LM head), jitted as a bare `x @ w` (XLA:CPU hands it to YNNPACK) and run as
`torch.matmul` (oneDNN/MKL) on the same arrays; rounds alternate the two sides and the medians are compared.
The last line weighs each shape's ratio by the time it takes in a LoRA step (the projections' kernel gradients
are the full step's only), so it says how much of the gap to torch lies in the matmul library itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import interleave  # noqa: E402

# (name, m, k, n, calls a LoRA step, calls a full step): SmolLM2-135M, 30 layers, hidden 576, q 576, k/v 192,
# MLP 1536, vocabulary 49152, 1024 tokens a step
SHAPES = [
    ("q/o forward, dx", 1024, 576, 576, 4 * 30, 4 * 30),
    ("k/v forward", 1024, 576, 192, 2 * 30, 2 * 30),
    ("k/v dx", 1024, 192, 576, 2 * 30, 2 * 30),
    ("gate/up forward, down dx", 1024, 576, 1536, 3 * 30, 3 * 30),
    ("down forward, gate/up dx", 1024, 1536, 576, 3 * 30, 3 * 30),
    ("LM head forward", 1024, 576, 49152, 1, 1),
    ("LM head dx", 1024, 49152, 576, 1, 1),
    ("kernel gradient 576x576", 576, 1024, 576, 0, 2 * 30),
    ("kernel gradient 576x192", 576, 1024, 192, 0, 2 * 30),
    ("kernel gradient 576x1536", 576, 1024, 1536, 0, 2 * 30),
    ("kernel gradient 1536x576", 1536, 1024, 576, 0, 30),
    ("LM head kernel gradient", 576, 1024, 49152, 0, 1),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="torch's intra-op threads (XLA:CPU uses every core)")
    args = parser.parse_args()

    import jax
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    totals = {"LoRA": [0.0, 0.0], "full": [0.0, 0.0]}  # step's matmul seconds: [jax, torch]
    for name, m, k, n, lora_calls, full_calls in SHAPES:
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        ja, jb = jax.numpy.asarray(a), jax.numpy.asarray(b)
        matmul = jax.jit(lambda x, w: x @ w).lower(ja, jb).compile()
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        repeats = max(3, int(8e9 / (2 * m * k * n)))  # ~8 GFLOP a timing
        sides = {"jax": lambda c=matmul, x=ja, w=jb: c(x, w).block_until_ready(),
                 "torch": lambda x=ta, w=tb: torch.matmul(x, w)}
        for run in sides.values():
            run()
        times = interleave.alternate({side: lambda run=run, n=repeats: [run() for _ in range(n)]
                                      for side, run in sides.items()}, args.rounds, repeats)
        jax_s, torch_s = (statistics.median(wall for wall, _, _ in times[side]) for side in ("jax", "torch"))
        flops = 2 * m * k * n
        print(f"{name:26s} [{m}x{k}] x [{k}x{n}]: XLA:CPU {flops / jax_s / 1e9:5.0f} GFLOP/s, torch "
              f"{flops / torch_s / 1e9:5.0f}; torch's time / XLA's {torch_s / jax_s:.2f}")
        for mode, calls in (("LoRA", lora_calls), ("full", full_calls)):
            totals[mode][0] += calls * jax_s
            totals[mode][1] += calls * torch_s
    for mode, (jax_s, torch_s) in totals.items():
        print(f"{mode} step's matmuls: XLA:CPU {jax_s:.2f} s, torch {torch_s:.2f} s")
    print("RATIO torch's matmul time / XLA:CPU's, weighted as a step runs them: "
          + ", ".join(f"{mode} {torch_s / jax_s:.2f}" for mode, (jax_s, torch_s) in totals.items()))


if __name__ == "__main__":
    main()
