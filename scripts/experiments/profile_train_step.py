"""Where a train step's time goes on the CPU: jaxlm's step profiled op by op (issue 31).

    PYTHONPATH=. python scripts/experiments/profile_train_step.py --modes full,lora [--steps 3] [--top 25]

The train step (SmolLM2-135M 4x256 float32, as scripts/bench_xla_flags.py builds it) is compiled with
`xla_cpu_enable_xprof_traceme`, which makes XLA:CPU record every thunk it runs (a fusion, a dot, a copy) in a
`jax.profiler` trace. Printed per mode: the step's wall time, then the ops by total time over the traced steps
(per step), each with its HLO (opcode, shape, what it computes, from the compiled module) and, for a dot, its
GFLOP/s; then the time per category (dots forward/backward, by library; loss; attention; copies and transposes;
the optimizer). Ops run concurrently on XLA:CPU's threads, so per-op times can add up to more than the wall time.
`--setting` adds XLA debug options (e.g. `xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT`).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_train import hf_config  # noqa: E402
from bench_xla_flags import train_engine  # noqa: E402

INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)(?:\{[^}]*\})? (\w[\w\-]*)\((.*)$")


def hlo_instructions(text: str) -> dict[str, dict]:
    """name -> {shape, opcode, line} for every instruction of the optimised HLO module."""
    found = {}
    for line in text.splitlines():
        match = INSTRUCTION.match(line)
        if match:
            name, shape, opcode, _ = match.groups()
            found[name] = {"shape": shape, "opcode": opcode, "line": line.strip()}
    return found


def dims(shape: str) -> list[int]:
    inside = re.search(r"\[([\d,]*)\]", shape)
    return [int(d) for d in inside.group(1).split(",") if d] if inside else []


def dot_flops(line: str, shapes: dict[str, str]) -> float:
    """2 x output elements x contracted size of a dot (the first operand's contracting dims)."""
    out = re.match(r"^\s*(?:ROOT )?%?[\w.\-]+ = (\S+)", line)
    operands = re.search(r"dot\(([^)]*)\)", line)
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
    if not (out and operands and contracting):
        return 0.0
    lhs = operands.group(1).split(",")[0].strip().split(" ")[-1].lstrip("%")
    lhs_dims = dims(shapes.get(lhs, ""))
    size = 1
    for d in contracting.group(1).split(","):
        size *= lhs_dims[int(d)] if d and int(d) < len(lhs_dims) else 1
    total = 1
    for d in dims(out.group(1)):
        total *= d
    return 2.0 * total * size


def dots_of(text: str) -> dict[str, float]:
    """For each top-level op of the module (a fusion, a dot), the FLOPs of the dots it runs."""
    computations, current, shapes = collections.defaultdict(list), None, {}
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            current = head.group(1)
            continue
        match = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+)", line)
        if match and current:
            shapes[match.group(1)] = match.group(2)
            computations[current].append(line)
    flops = {}
    for lines in computations.values():
        for line in lines:
            name = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) =", line).group(1)  # pyright: ignore[reportOptionalMemberAccess]
            if " dot(" in line:
                flops[name] = dot_flops(line, shapes)
            called = re.search(r"calls=%?([\w.\-]+)", line)
            if called:
                flops[name] = sum(dot_flops(inner, shapes) for inner in computations.get(called.group(1), [])
                                  if " dot(" in inner)
    return flops


def category(name: str, info: dict, flops: float, vocab: int, seq: int) -> str:
    """A coarse label from the op's library, pass (`transpose(` in its op_name: the backward pass) and shape:
    a vocabulary-sized dimension is the LM head and the loss, a [.., seq, seq] one attention's scores."""
    op_name = re.search(r'op_name="([^"]*)"', info["line"])
    backward = "transpose(" in (op_name.group(1) if op_name else "")
    shape = dims(info["shape"])
    operands = [d for size in re.findall(r"\[([\d,]+)\]", info["line"]) for d in size.split(",") if d]
    where = ("LM head / loss" if str(vocab) in operands
             else "attention" if shape[-2:] == [seq, seq] else "layers")
    if flops:
        library = "ynn" if "ynn" in name else "onednn" if "onednn" in name else "xnn" if "xnn" in name else "eigen"
        return f"dot {library} {'backward' if backward else 'forward'} ({where})"
    if info["opcode"] in ("copy", "transpose") or name.startswith(("copy", "transpose")):
        return f"copy / transpose ({where})"
    return f"elementwise / reduce ({where})"


def profile(mode: str, args) -> None:
    import jax
    import jax.numpy as jnp

    options = {"xla_cpu_enable_xprof_traceme": True, **dict(s.split("=", 1) for s in args.setting)}
    engine, data, lowered = train_engine(mode, args)
    vocab = hf_config(args.model, False)["vocab_size"]
    compiled = lowered.compile(compiler_options=options)
    text = compiled.as_text()
    instructions, flops = hlo_instructions(text), dots_of(text)
    step = lambda state, batch: compiled(state, engine.frozen, engine.rest, batch, engine.reference,  # noqa: E731
                                         engine.teacher)
    state = jax.tree.map(jnp.copy, engine.state)
    state, metrics = step(state, data[0])
    jax.block_until_ready(metrics)
    folder = tempfile.mkdtemp(prefix="jaxlm_profile_")
    walls = []
    with jax.profiler.trace(folder, create_perfetto_trace=True):
        for i in range(args.steps):
            began = time.perf_counter()
            state, metrics = step(state, data[(i + 1) % len(data)])
            jax.block_until_ready(metrics)
            walls.append(time.perf_counter() - began)
    with gzip.open(glob.glob(f"{folder}/**/perfetto_trace.json.gz", recursive=True)[0]) as file:
        trace = json.load(file)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    per_op, per_thread = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event["name"] in instructions:
            per_op[event["name"]] += event["dur"] / 1e6 / args.steps
            per_thread[event["tid"]] += event["dur"] / 1e6 / args.steps
    wall = sorted(walls)[len(walls) // 2]
    entry = hlo_instructions(text[text.index("\nENTRY"):])
    total_flops = sum(f for name, f in flops.items() if name in entry)
    print(f"[{mode}] median step {wall:.2f} s wall; ops' own time {sum(per_op.values()):.2f} s a step; "
          f"dots {total_flops / 1e9:.0f} GFLOP a step; options {options}", flush=True)
    print("  ops' time by thread (s a step): " + ", ".join(f"{s:.2f}" for _, s in per_thread.most_common()))
    for name, seconds in per_op.most_common(args.top):
        info = instructions[name]
        rate = f" {flops.get(name, 0) / seconds / 1e9:6.1f} GFLOP/s" if flops.get(name) else ""
        where = re.search(r'op_name="([^"]*)"', info["line"])
        print(f"  {seconds:7.3f} s  {name:32s} {info['opcode']:10s} {info['shape'][:40]:40s}{rate}  "
              f"{(where.group(1) if where else '')[-90:]}")
    by_category = collections.Counter()
    for name, seconds in per_op.items():
        by_category[category(name, instructions[name], flops.get(name, 0), vocab, args.seq)] += seconds
    traced = set(per_op)
    by_shape = collections.defaultdict(lambda: [0, 0.0, 0.0])  # (pass, output shape) -> count, seconds, FLOPs
    for name, seconds in per_op.items():
        if flops.get(name):
            where = re.search(r'op_name="([^"]*)"', instructions[name]["line"])
            key = ("backward" if where and "transpose(" in where.group(1) else "forward", instructions[name]["shape"],
                   round(flops[name] / 1e6))
            by_shape[key][0] += 1
            by_shape[key][1] += seconds
            by_shape[key][2] += flops[name]
    print("  dots by pass and output shape (s a step, count, GFLOP/s):")
    for (pass_, shape, each), (count, seconds, work) in sorted(by_shape.items(), key=lambda kv: -kv[1][1])[:25]:
        print(f"    {seconds:7.3f} s  {count:4d} x {pass_:8s} {shape:32s} {each:6d} MFLOP each "
              f"{work / seconds / 1e9:6.1f} GFLOP/s")
    by_source = collections.Counter()  # what the other ops compute, by the jax primitive they came from
    for name, seconds in per_op.items():
        if not flops.get(name):
            where = re.search(r'op_name="([^"]*)"', instructions[name]["line"])
            by_source[re.sub(r"\[.*", "", where.group(1).split("/")[-1]) if where else "(unnamed)"] += seconds
    print("  other ops by the jax primitive they came from (s a step, the top 12):")
    for source, seconds in by_source.most_common(12):
        print(f"    {seconds:7.3f} s  {source}")
    by_kind = collections.defaultdict(lambda: [0, 0.0])  # (op kind, output shape, where from) -> count, seconds
    for name, seconds in per_op.items():
        if not flops.get(name):
            where = re.search(r'op_name="([^"]*)"', instructions[name]["line"])
            key = (re.sub(r"\.\d+$", "", name), instructions[name]["shape"][:36],
                   "/".join(where.group(1).split("/")[-2:])[-60:] if where else "")
            by_kind[key][0] += 1
            by_kind[key][1] += seconds
    print(f"  other ops by kind, output shape and source (s a step, count; the top {args.top}):")
    for (kind, shape, source), (count, seconds) in sorted(by_kind.items(), key=lambda kv: -kv[1][1])[:args.top]:
        print(f"    {seconds:7.3f} s  {count:4d} x {kind[:34]:34s} {shape:36s} {source}")
    print("  by category (s a step):")
    for label, seconds in by_category.most_common():
        print(f"    {seconds:7.3f} s  {label}")
    untimed = total_flops - sum(flops.get(n, 0) for n in traced)
    if untimed > 0.01 * total_flops:
        print(f"  ({untimed / 1e9:.0f} GFLOP of dots ran inside ops the trace does not name, e.g. a while loop)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="full,lora")
    parser.add_argument("--steps", type=int, default=3, help="traced steps (after one warm-up step)")
    parser.add_argument("--top", type=int, default=25, help="how many ops to list")
    parser.add_argument("--setting", action="append", default=[], metavar="OPTION=VALUE",
                        help="an XLA debug option for the step's compilation")
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny, or a PATH")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a jaxlm config override")
    args = parser.parse_args()
    for mode in args.modes.split(","):
        profile(mode, args)


if __name__ == "__main__":
    main()
