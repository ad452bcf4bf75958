"""Data risk audit: duplication, contamination, authenticity, consistency, bias, labels, diversity.

`python -m jaxlm.audit DATA.jsonl --out DIR` (see `--help`), or from Python::

    from jaxlm.audit import AuditConfig, run_audit
    result = run_audit(AuditConfig("train.jsonl", out="audit", model=None))

The report's keys are documented in `jaxlm/audit/REPORT.md`.
"""

from jaxlm.audit.config import AuditConfig, AuditError
from jaxlm.audit.flags import DEFAULT_REMOVE, REASONS


def run_audit(config: AuditConfig):
    """Run the audit (imported lazily: the measures pull in datasketch, sacrebleu, matplotlib)."""
    from jaxlm.audit.pipeline import run_audit as run

    return run(config)


__all__ = ["AuditConfig", "AuditError", "DEFAULT_REMOVE", "REASONS", "run_audit"]
