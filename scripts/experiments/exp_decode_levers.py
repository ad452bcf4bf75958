"""Generation levers A/B: XLA:CPU options for generation's programs, in ONE process, runs interleaved.

    PYTHONPATH=. python scripts/experiments/exp_decode_levers.py [--settings "default;ynn=dot"] [--batches 1 8]
        [--int8] [--new-tokens 64] [--repeats 5]

Each setting is a set of XLA debug options given to generation's compilations (prefill and decode: this
script hands them to `Lowered.compile`, and keeps `jaxlm.sampling.loop`'s program cache per setting), so after
the warm-up every run only executes. Runs go A B C A B C ... so that load from other processes hits every
setting alike. Per setting: the median decode milliseconds per token (wall) and the
process CPU milliseconds per new token (all threads, prefill included: on a loaded machine the CPU time
moves less than the wall time), and whether its greedy tokens equal the first setting's.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time

import jax

import jaxlm
from jaxlm import assets
from jaxlm.sampling import loop

DOT = "LIBRARY_FUSION_TYPE_DOT"
SETTINGS = {
    "default": {},
    **{f"{lib}=dot": {f"xla_cpu_experimental_{lib}_fusion_type": DOT} for lib in ("ynn", "onednn", "xnn")},
    "ynn off": {"xla_cpu_experimental_ynn_fusion_type": ""},  # dots and attention to XLA's own emitters/Eigen
    "sched=memory": {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"},
    "no concurrency scheduler": {"xla_cpu_enable_concurrency_optimized_scheduler": False},
}
PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.", "Explain gravity to a child.",
           "List three fruits and their colours.", "How do airplanes fly?", "Tell me a joke about computers.",
           "What is the difference between weather and climate?", "Describe a cat in two sentences."]


_compile = jax.stages.Lowered.compile
_caches: dict[str, collections.OrderedDict] = {}  # setting -> generation's compiled programs
_options: dict = {}


def _compile_with_setting(lowered, compiler_options=None, **kwargs):
    return _compile(lowered, compiler_options=compiler_options or _options.get("now"), **kwargs)


def run(model, tokenizer, prompts, new_tokens, name):
    """One `jaxlm.generate` call whose programs were compiled with setting `name`'s XLA options."""
    _options["now"] = SETTINGS[name] or None
    loop._executables = _caches.setdefault(name, collections.OrderedDict())
    jax.stages.Lowered.compile = _compile_with_setting
    cpu = time.process_time()
    result = jaxlm.generate(model, tokenizer, prompts, max_new_tokens=new_tokens, chat=True, stop_at_eos=False)
    cpu = time.process_time() - cpu
    tokens_per_row = new_tokens - 1  # the first new token comes from prefill
    return {"decode ms": result.decode_seconds / tokens_per_row * 1000,
            "cpu ms": cpu / (len(prompts) * new_tokens) * 1000,
            "compile": result.compile_seconds, "tokens": result.token_ids}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=assets.smollm2_gguf())
    parser.add_argument("--settings", default="default;ynn=dot", help=f"';'-separated, from: {'; '.join(SETTINGS)}")
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--int8", action="store_true", help="int8 weights (quantize='int8') instead of float32")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    names = args.settings.split(";")
    model, tokenizer = jaxlm.load_pretrained(args.model, quantize="int8" if args.int8 else None)
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    for batch in args.batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        warm = {name: run(model, tokenizer, prompts, args.new_tokens, name) for name in names}
        runs = {name: [] for name in names}
        for _ in range(args.repeats):
            for name in names:
                runs[name].append(run(model, tokenizer, prompts, args.new_tokens, name))
        base = statistics.median(r["decode ms"] for r in runs[names[0]])
        for name in names:
            wall = statistics.median(r["decode ms"] for r in runs[name])
            cpu = statistics.median(r["cpu ms"] for r in runs[name])
            same = all(r["tokens"] == warm[names[0]]["tokens"] for r in runs[name])
            print(f"batch {batch} {'int8' if args.int8 else 'f32'} {name:>24}: decode {wall:6.2f} ms a step "
                  f"({batch * 1000 / wall:5.1f} tok/s), CPU {cpu:6.2f} ms a new token, ratio {wall / base:.2f}, "
                  f"compile {warm[name]['compile']:.1f} s, tokens {'same' if same else 'DIFFER'}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
