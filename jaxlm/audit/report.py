"""report.json: assembling the meters' sections into one document with stable keys.

The layout is documented key by key in `jaxlm/audit/REPORT.md`; bump
``SCHEMA_VERSION`` when a key changes meaning or disappears.
"""

from __future__ import annotations

import json
import os

import numpy as np

from jaxlm.audit import html_report
from jaxlm.audit.flags import Flags

SCHEMA_VERSION = 1
SECTIONS = ("duplication", "contamination", "authenticity", "consistency", "bias", "labels",
            "diversity", "generation")


def merge_sections(target: dict, new: dict) -> dict:
    """Merge ``new`` into ``target`` recursively (several meters fill one section)."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_sections(target[key], value)
        else:
            target[key] = value
    return target


def assemble(sections: dict, *, input_summary: dict, flag_summary: dict, timing: dict) -> dict:
    """The report in its documented key order; every section is present (None = not measured)."""
    report = {"schema_version": SCHEMA_VERSION, "input": input_summary, "flags": flag_summary}
    for name in SECTIONS:
        report[name] = sections.get(name)
    report["timing"] = timing
    return report


def _builtin(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write(out: str, report: dict, flags: Flags, examples: dict[int, str]) -> None:
    """report.json and report.html in ``out``."""
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False, default=_builtin)
        f.write("\n")
    with open(os.path.join(out, "report.html"), "w", encoding="utf-8") as f:
        f.write(html_report.render(report, flags, examples))
