"""Contamination: training records that overlap an evaluation set.

A record is contaminated when it contains any n-gram (default 13 words, the
GPT-3 convention) of an eval record, or a whole eval record shorter than that.
Each contaminated record is listed with the eval records it overlaps.
"""

from __future__ import annotations

from jaxlm.audit.flags import Flags
from jaxlm.audit.items import AuditItem
from jaxlm.text.ngrams import NgramIndex

MAX_LISTED = 1000  # report.json lists this many contaminated records; the count is exact


class ContaminationMeter:
    name = "contamination"

    def __init__(self, eval_index: NgramIndex | None, eval_files: list[str]):
        self.index, self.eval_files = eval_index, eval_files
        self.records = 0
        self.listed: list[dict] = []

    def observe(self, item: AuditItem, flags: Flags) -> None:
        self.records += 1
        if self.index is None:
            return
        share, owners = self.index.matches(item.words)
        if not owners:
            return
        overlaps = [{"eval_file": name, "eval_index": position} for name, position in owners[:5]]
        flags.add(item.index, "contamination", {"ngram_share": round(share, 3), "overlaps": overlaps},
                  severity=share)
        if len(self.listed) < MAX_LISTED:
            self.listed.append({"index": item.index, "ngram_share": round(share, 3),
                                "overlaps": overlaps})

    def merge(self, other: ContaminationMeter, flags: Flags) -> None:
        """Add a later shard's records (see `sharded.py`)."""
        self.records += other.records
        self.listed = (self.listed + other.listed)[:MAX_LISTED]

    def __getstate__(self):  # a shard ships its records; the driver has the index
        return {**vars(self), "index": None}

    def finish(self, flags: Flags) -> dict:
        count = flags.counts["contamination"]
        return {"contamination": {
            "eval_files": self.eval_files,
            "ngram": self.index.n if self.index else None,
            "eval_records": self.index.documents if self.index else 0,
            "contaminated_records": count if self.index else None,
            "contaminated_fraction": count / max(self.records, 1) if self.index else None,
            "records": self.listed,
        }}
