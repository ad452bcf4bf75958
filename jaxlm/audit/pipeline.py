"""The audit run: index the eval/reference corpora, then three streaming passes.

1. Measure: every meter sees every record once and flags what it can.
2. Resolve: the few records a meter needs to see again (contradiction groups).
3. Write: ``flagged.jsonl`` and ``clean.jsonl``, keeping the text of the worst
   examples for the HTML page.

Records are never all held in memory: each pass re-reads the file, and the
meters keep compact per-record state (hashes, signatures, one float).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter

from jaxlm.audit import report as report_module
from jaxlm.audit.config import AuditConfig, AuditError
from jaxlm.audit.embeddings import make_embedder
from jaxlm.audit.flags import REASONS, Flags
from jaxlm.audit.gates import evaluate, parse_gate
from jaxlm.audit.items import read_items
from jaxlm.audit.measuring import build_indexes, build_meters, make_scorer, measure, progress
from jaxlm.data.records import ReadStats


@dataclasses.dataclass
class AuditResult:
    report: dict
    flags: Flags
    failed_gates: list[dict]


def run_audit(config: AuditConfig) -> AuditResult:
    """Audit ``config.data`` and write report.json, report.html, flagged.jsonl, clean.jsonl."""
    started = time.perf_counter()
    unknown = sorted(set(config.remove) - set(REASONS))
    if unknown:
        raise AuditError(f"--remove: unknown reason(s) {unknown}; known: {sorted(REASONS)}")
    gates = [parse_gate(g) for g in config.gates]
    if config.workers < 1:  # zero Ray actors would wait for ever for a shard to be measured
        raise AuditError(f"--workers: must be >= 1, got {config.workers}")
    if not os.path.exists(config.data):
        raise AuditError(f"{config.data}: no such file or folder")
    if config.engine == "ray":
        from jaxlm.cluster import reach

        reach()  # a cluster that does not answer is an error before --out is created
    os.makedirs(config.out, exist_ok=True)

    if config.engine == "ray":  # indexes, models and measuring on Ray workers, one shard per file
        from jaxlm.audit.sharded import measure_sharded

        measured_at = time.perf_counter()
        meters, flags, kinds, stats = measure_sharded(config)
    else:
        meters = build_meters(config, *build_indexes(config), scorer=make_scorer(config),
                              embedder=make_embedder(config.embedder))
        flags, kinds, stats = Flags(), Counter(), ReadStats()
        measured_at = time.perf_counter()
        measure(meters, flags, kinds, progress(read_items(config.data, skip_bad=config.skip_bad, stats=stats),
                                                config, "audit: measuring"))
    records = sum(kinds.values())
    if records == 0:
        raise AuditError(f"{config.data}: no records to audit")
    measure_seconds = time.perf_counter() - measured_at

    _resolve(meters, flags, config)
    sections: dict = {}
    for meter in meters:
        report_module.merge_sections(sections, meter.finish(flags))

    removed, examples = _write_records(config, flags, records)
    report = report_module.assemble(
        sections,
        input_summary={"path": config.data, "records": records, "kinds": dict(kinds),
                       "skipped": stats.skipped, "read_errors": stats.errors},
        flag_summary={"flagged_records": len(flags), "by_reason": {r: flags.counts[r] for r in REASONS},
                      "remove_reasons": list(config.remove), "removed_records": removed,
                      "clean_records": records - removed},
        timing={"seconds": time.perf_counter() - started, "measure_seconds": measure_seconds,
                "records_per_s": records / max(time.perf_counter() - started, 1e-9)},
    )
    report["gates"] = evaluate(gates, report)
    report_module.write(config.out, report, flags, examples)
    return AuditResult(report, flags, [g for g in report["gates"] if g["failed"]])


def _resolve(meters: list, flags: Flags, config: AuditConfig) -> None:
    """Second pass: hand each meter the records it asked to see again."""
    wanted = {meter: meter.wanted() for meter in meters if hasattr(meter, "wanted")}
    needed = set().union(*wanted.values()) if wanted else set()
    if not needed:
        return
    found = {}
    for item in progress(read_items(config.data, skip_bad=config.skip_bad), config, "audit: resolving"):
        if item.index in needed:
            found[item.index] = item
    for meter, indices in wanted.items():
        if indices:
            meter.resolve({i: found[i] for i in indices}, flags)


def _write_records(config: AuditConfig, flags: Flags, records: int) -> tuple[int, dict]:
    """Third pass: flagged.jsonl, clean.jsonl; returns (records removed, example texts by index)."""
    remove = set(config.remove)
    wanted_examples = flags.example_indices()
    examples, removed = {}, 0
    with open(os.path.join(config.out, "flagged.jsonl"), "w", encoding="utf-8") as flagged, \
         open(os.path.join(config.out, "clean.jsonl"), "w", encoding="utf-8") as clean:
        for item in progress(read_items(config.data, skip_bad=config.skip_bad), config,
                              "audit: writing", total=records):
            reasons = flags.reasons_of(item.index)
            if item.index in wanted_examples:
                examples[item.index] = item.text
            if reasons:
                flagged.write(_json_line({"index": item.index, "line": item.line,
                                          "reasons": sorted(reasons), "details": dict(sorted(reasons.items())),
                                          "record": item.data}))
            if remove & reasons.keys():
                removed += 1
            else:
                clean.write(_json_line(item.data))
    return removed, examples


def _json_line(obj) -> str:
    line = json.dumps(obj, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (from a JSON escape) has no UTF-8 form: keep it escaped
        line = json.dumps(obj)
    return line + "\n"
