"""Generation efficiency of synthetic sets, from the provenance their records carry.

A record's provenance is its ``provenance`` object, or else its top-level keys.
Recognised fields (first present name wins):

* tokens generated: ``generated_tokens``, ``completion_tokens``, ``tokens``
* time taken: ``generation_seconds``, ``seconds``, ``elapsed_s``, ``latency_s``
* speed, when tokens/time are absent: ``tokens_per_s``, ``tokens_per_second``
* acceptance: ``accepted`` (bool, the record passed the generator's filters), or
  ``attempts`` / ``candidates`` (how many generations it took to keep this one)
* the generator: ``model``, ``generator``
"""

from __future__ import annotations

from collections import defaultdict

from jaxlm.audit.flags import Flags
from jaxlm.audit.items import AuditItem

TOKENS = ("generated_tokens", "completion_tokens", "tokens")
SECONDS = ("generation_seconds", "seconds", "elapsed_s", "latency_s")
SPEED = ("tokens_per_s", "tokens_per_second")
ATTEMPTS = ("attempts", "candidates")
MODEL = ("model", "generator")


def _first_number(fields: dict, names: tuple[str, ...]) -> float | None:
    for name in names:
        value = fields.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


class _Totals:
    def __init__(self):
        self.records = 0
        self.tokens = self.seconds = self.speed_sum = 0.0
        self.timed = self.speeds = 0

    def tokens_per_s(self) -> float | None:
        if self.timed and self.seconds > 0:
            return self.tokens / self.seconds
        return self.speed_sum / self.speeds if self.speeds else None


class GenerationMeter:
    name = "generation"

    def __init__(self):
        self.records = 0
        self.all = _Totals()
        self.by_model: dict[str, _Totals] = defaultdict(_Totals)
        self.accepted = self.with_accepted = 0
        self.attempts = self.with_attempts = 0

    def observe(self, item: AuditItem, flags: Flags) -> None:
        self.records += 1
        fields = item.data.get("provenance")
        fields = fields if isinstance(fields, dict) else item.data
        tokens, seconds = _first_number(fields, TOKENS), _first_number(fields, SECONDS)
        speed = _first_number(fields, SPEED)
        accepted, attempts = fields.get("accepted"), _first_number(fields, ATTEMPTS)
        if tokens is None and speed is None and not isinstance(accepted, bool) and attempts is None:
            return
        model = next((str(fields[m]) for m in MODEL if fields.get(m) is not None), "(unknown)")
        for totals in (self.all, self.by_model[model]):
            totals.records += 1
            if tokens is not None and seconds is not None:
                totals.tokens += tokens
                totals.seconds += seconds
                totals.timed += 1
            elif speed is not None:
                totals.speed_sum += speed
                totals.speeds += 1
        if isinstance(accepted, bool):
            self.with_accepted += 1
            self.accepted += accepted
        if attempts is not None:
            self.with_attempts += 1
            self.attempts += attempts

    def merge(self, other: GenerationMeter, flags: Flags) -> None:
        """Add a later shard's totals (see `sharded.py`)."""
        self.records += other.records
        for mine, theirs in [(self.all, other.all)] + [(self.by_model[m], t) for m, t in other.by_model.items()]:
            for name in ("records", "tokens", "seconds", "speed_sum", "timed", "speeds"):
                setattr(mine, name, getattr(mine, name) + getattr(theirs, name))
        self.accepted += other.accepted
        self.with_accepted += other.with_accepted
        self.attempts += other.attempts
        self.with_attempts += other.with_attempts

    def finish(self, flags: Flags) -> dict:
        if self.all.records == 0:
            return {"generation": None}
        if self.with_accepted:
            acceptance = self.accepted / self.with_accepted
        elif self.with_attempts and self.attempts > 0:
            acceptance = self.with_attempts / self.attempts
        else:
            acceptance = None
        return {"generation": {
            "records_with_provenance": self.all.records,
            "provenance_fraction": self.all.records / max(self.records, 1),
            "generated_tokens": self.all.tokens if self.all.timed else None,
            "generation_seconds": self.all.seconds if self.all.timed else None,
            "tokens_per_s": self.all.tokens_per_s(),
            "acceptance_rate": acceptance,
            "by_model": {name: {"records": t.records, "tokens_per_s": t.tokens_per_s()}
                         for name, t in sorted(self.by_model.items())},
        }}
