"""jaxlm's LoRA r16 train step against another step, in one process (issue 31).

    PYTHONPATH=. python scripts/experiments/exp_lora_step.py --against full|scaled-product|one-kernel
        [--mode lora|full] [--rounds 6]

`full`: the full fine-tuning step of the same model (the target: a LoRA step >= 1.3x its full step).
`scaled-product`: LoRA as it was before the scale moved onto B, alpha/rank x (x A B) (`LoRALinear.__call__`
patched back), against LoRA as it is.
`one-kernel`: siblings that read the same x (q/k/v; gate/up) as one matmul against their kernels concatenated
(`fused_fan_out`, patched in for `layers.fan_out`), against the step as it is; `--mode full` compares the full
fine-tuning steps instead.

Both engines are SmolLM2-135M 4x256 float32 (the shipped GGUF) as `jaxlm train` builds them on this machine
(`train.steps_per_call` steps a call); both compiled, then rounds alternate so the machine's drift hits both.
Prints each side's median wall and user CPU seconds per step and the speed ratio of LoRA as it is.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import interleave  # noqa: E402


def scaled_product_call(self, x, down=None):
    """LoRALinear.__call__ before the scale moved onto B."""
    from jaxlm.models import layers

    y = layers.dense(x, self.kernel[...].astype(x.dtype))
    if self.bias is not None:
        y = y + self.bias[...].astype(x.dtype)
    if down is None:
        down = layers.thin_dense(x, self.lora_a[...].astype(x.dtype))
    return y + self.scale * layers.dense(down, self.lora_b[...].astype(x.dtype))


def fused_fan_out(projections, x):
    """layers.fan_out with the base kernels (and biases) of the siblings concatenated: one x @ [W_1 | W_2 | ...]
    forward, one dx and one kernel gradient backward, split per sibling; LoRA's thin pairs as fan_out does."""
    import itertools

    import jax.numpy as jnp

    from jaxlm.models import layers

    kernels = [p.kernel[...].astype(x.dtype) for p in projections]
    cuts = list(itertools.accumulate(k.shape[-1] for k in kernels))[:-1]
    ys = jnp.split(layers.dense(x, jnp.concatenate(kernels, axis=-1)), cuts, axis=-1)
    ys = [y if p.bias is None else y + p.bias[...].astype(x.dtype) for p, y in zip(projections, ys, strict=True)]
    adapted = [p for p in projections if hasattr(p, "lora_a")]
    if not adapted:
        return ys
    a = jnp.concatenate([p.lora_a[...].astype(x.dtype) for p in adapted], axis=-1)
    ranks = [p.lora_a.get_value().shape[-1] for p in adapted]
    downs = dict(zip(map(id, adapted), jnp.split(layers.thin_dense(x, a), list(itertools.accumulate(ranks))[:-1],
                                                  axis=-1), strict=True))
    return [y + layers.dense(downs[id(p)], (p.scale * p.lora_b[...]).astype(x.dtype)) if id(p) in downs else y
            for p, y in zip(projections, ys, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", choices=["full", "scaled-product", "one-kernel"], default="full")
    parser.add_argument("--mode", choices=["lora", "full"], default="lora", help="one-kernel: which step")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if args.mode == "full" and args.against != "one-kernel":
        parser.error("--mode full goes with --against one-kernel (the other comparisons are of LoRA steps)")

    import jax

    from jaxlm.models import layers, lora

    rank = 16 if args.mode == "lora" else 0
    engines = {"LoRA" if rank else "full": interleave.smollm2_engine(rank)}
    if args.against == "one-kernel":
        layers.fan_out = fused_fan_out
        engines["one kernel for siblings"] = interleave.smollm2_engine(rank)
    elif args.against == "full":
        engines["full"] = interleave.smollm2_engine(0)
    else:
        lora.LoRALinear.__call__ = scaled_product_call
        engines["LoRA, scale on the product"] = interleave.smollm2_engine(16)

    def run(side):
        engine, data = engines[side]
        return lambda: jax.block_until_ready(engine.steps(data))

    first = next(iter(engines))
    times = interleave.alternate({side: run(side) for side in engines}, args.rounds, len(engines[first][1]))
    mine, other = interleave.report(times, 4 * 256)
    for side, (engine, data) in engines.items():  # the same model both sides (not --against full): the same losses
        print(f"{side}: loss after one more call {jax.device_get(engine.steps(data))['loss'][-1]:.6f}")
    if args.against == "one-kernel":
        print(f"RATIO {first}, one kernel for siblings / as it is: speed {mine / other:.3f}")
    else:
        print(f"RATIO {first} / {args.against}: speed {other / mine:.3f}")


if __name__ == "__main__":
    main()
