"""`make train` as it was (every data.test batch scored before and after, no cache) against as it is now
(the first TEST_BATCHES scored, the untrained model's scores cached), each in its own process:

    PYTHONPATH=. python scripts/bench_make_train.py            # ~25 minutes on 2 CPU cores
    PYTHONPATH=. python scripts/bench_make_train.py --set train.steps=4   # a quick look at the scoring alone

Three runs, in order: old, new with an empty cache (a first `make train`), new again (the cache filled).
Each prints its wall and CPU seconds (user + system: less distorted by a loaded machine); the last line
gives new over old for both.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

TEST = "data.test=[tfds:jaxlm_chatterbot:test, tfds:jaxlm_chitchat:test]"


def timed(args: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jaxlm.train", "--no-progress", TEST, *args], check=True,
                   stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - began, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-batches", type=int, default=8, help="the Makefile's TEST_BATCHES")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        runs = {"old": ["eval.test_steps=0"],
                "new, first": [f"eval.test_steps={args.test_batches}", f"eval.score_cache={cache}"],
                "new, cached": [f"eval.test_steps={args.test_batches}", f"eval.score_cache={cache}"]}
        got = {}
        for i, (name, extra) in enumerate(runs.items()):
            got[name] = timed([f"output_dir={tmp}/run{i}", *extra, *args.set])
            print(f"{name}: {got[name][0]:.0f} s wall, {got[name][1]:.0f} CPU s", flush=True)
    old = got["old"]
    print("RATIO new/old (wall, CPU): " + "; ".join(f"{name} {w / old[0]:.2f}, {c / old[1]:.2f}"
                                                  for name, (w, c) in got.items() if name != "old"))


if __name__ == "__main__":
    main()
