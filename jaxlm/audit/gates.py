"""`--fail-on KEY>VALUE`: thresholds on report figures that make the audit fail.

``KEY`` is a dotted path into report.json (``duplication.exact_fraction``);
the operator is one of ``> >= < <= ==``. A gate whose figure was not measured
(null, e.g. perplexity with ``--model none``) fails too: a pipeline gate that
silently passes because nothing was checked would be worse than none.
"""

from __future__ import annotations

import dataclasses
import operator
import re

from jaxlm.audit.config import AuditError

_OPERATORS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, ">": operator.gt, "<": operator.lt}
_GATE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(>=|<=|==|>|<)\s*([-+0-9.eE]+)\s*$")


@dataclasses.dataclass(frozen=True)
class Gate:
    key: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.threshold:g}"


def parse_gate(text: str) -> Gate:
    match = _GATE.match(text)
    if not match:
        raise AuditError(f"--fail-on {text!r}: expected KEY>VALUE, e.g. duplication.exact_fraction>0.05 "
                         f"(operators: {' '.join(_OPERATORS)})")
    key, op, value = match.groups()
    try:
        return Gate(key, op, float(value))
    except ValueError:
        raise AuditError(f"--fail-on {text!r}: {value!r} is not a number") from None


def lookup(report: dict, key: str):
    """The figure at dotted ``key``; AuditError naming the known keys when it does not exist."""
    node = report
    for depth, part in enumerate(key.split(".")):
        if node is None:
            return None  # a section that was not measured this run
        if not isinstance(node, dict) or part not in node:
            where = ".".join(key.split(".")[:depth]) or "report.json"
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "(not an object)"
            raise AuditError(f"--fail-on {key}: no key {part!r} under {where} (has: {known})")
        node = node[part]
    return node


def evaluate(gates: list[Gate], report: dict) -> list[dict]:
    """One result per gate: the figure, and whether the gate failed."""
    results = []
    for gate in gates:
        value = lookup(report, gate.key)
        if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
            raise AuditError(f"--fail-on {gate}: {gate.key} is not a number (it is {type(value).__name__})")
        failed = value is None or _OPERATORS[gate.op](value, gate.threshold)
        results.append({"gate": str(gate), "value": value, "failed": failed,
                        "why": "not measured in this run" if value is None else None})
    return results
