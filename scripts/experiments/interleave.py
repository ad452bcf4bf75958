"""Rounds of two (or more) ways of running the same work in one process, alternating their order so the
machine's drift hits both alike: what the in-process A/Bs of cpu_speed.md time with."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable


def alternate(runs: dict[str, Callable[[], object]], rounds: int, steps: int) -> dict[str, list[tuple]]:
    """{side: [(wall, user CPU, system CPU) seconds per step, one per round]}; each run does `steps` steps and
    blocks until they are done."""
    times: dict[str, list[tuple]] = {side: [] for side in runs}
    for r in range(rounds):
        for side in list(runs)[:: 1 if r % 2 == 0 else -1]:
            before, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            runs[side]()
            wall, after = time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF)
            times[side].append((wall / steps, (after.ru_utime - before.ru_utime) / steps,
                                (after.ru_stime - before.ru_stime) / steps))
    return times


def report(times: dict[str, list[tuple]], tokens_per_step: int, label: str = "") -> list[float]:
    """Prints each side's median wall, user and system CPU seconds per step; returns the median walls."""
    medians = []
    for side, rows in times.items():
        wall, user, system = (statistics.median(column) for column in zip(*rows, strict=True))
        medians.append(wall)
        print(f"{label}{side}: median {wall:.2f} s/step ({tokens_per_step / wall:.0f} tok/s; rounds "
              f"{', '.join(f'{row[0]:.2f}' for row in rows)}), user CPU {user:.2f}, kernel {system:.2f} s/step")
    return medians
