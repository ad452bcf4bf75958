"""Data risk audit: duplication, contamination, authenticity, consistency, bias, labels, diversity.

`python -m jaxlm.audit DATA.jsonl --out DIR` (see `--help`), or from Python::

    from jaxlm.audit import AuditConfig, run_audit
    result = run_audit(AuditConfig("train.jsonl", out="audit", model=None))

The report's keys are documented in `jaxlm/audit/REPORT.md`.
"""

from jaxlm.audit.config import AuditConfig, AuditError
from jaxlm.audit.flags import DEFAULT_REMOVE, REASONS
from jaxlm.lazy import lazy_attributes

# Loaded on first use: the measures pull in datasketch, sacrebleu, matplotlib.
_LAZY = {"run_audit": "jaxlm.audit.pipeline", "AuditResult": "jaxlm.audit.pipeline"}

__all__ = ["AuditConfig", "AuditError", "DEFAULT_REMOVE", "REASONS", *_LAZY]

__getattr__ = lazy_attributes(__name__, _LAZY)
