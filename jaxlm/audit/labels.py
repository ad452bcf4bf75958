"""Label quality for labelled data: distribution, conflicting labels, invalid BIO.

Labelled records are NER records (``tokens`` + ``tags``) and text records with a
``label`` field. A label conflict is the same input (after case/whitespace
normalisation) with a different label; both sides are flagged, since the audit
cannot tell which one is right.
"""

from __future__ import annotations

from collections import Counter

from jaxlm.audit.flags import Flags
from jaxlm.audit.items import AuditItem
from jaxlm.text.words import normalize

MAX_LABELS = 200  # beyond this many distinct labels the field is free text, not a label


class LabelMeter:
    name = "labels"

    def __init__(self):
        self.labelled = 0
        self.label_counts: Counter[str] = Counter()
        self.tag_counts: Counter[str] = Counter()
        self.entity_counts: Counter[str] = Counter()
        self._first: dict[int, tuple[int, int]] = {}  # input hash -> (first index, label hash)
        self._conflict_groups: set[int] = set()
        self.deferred: list | None = None  # a shard of a sharded audit leaves conflicts to the driver

    def observe(self, item: AuditItem, flags: Flags) -> None:
        if item.label is None:
            return
        self.labelled += 1
        if item.kind == "ner":
            self._count_tags(item.tags)
            self._check_bio(item, flags)
        elif len(self.label_counts) < MAX_LABELS or item.label in self.label_counts:
            self.label_counts[item.label] += 1
        self._check_conflict(item, flags)

    def _count_tags(self, tags: list[str]) -> None:
        self.tag_counts.update(tags)
        self.entity_counts.update(tag[2:] for tag in tags if tag.startswith("B-"))

    def _check_bio(self, item: AuditItem, flags: Flags) -> None:
        errors = bio_errors(item.tags)
        if errors:
            shown = [{"position": i, "token": item.data["tokens"][i], "tag": item.tags[i],
                      "after": item.tags[i - 1] if i else None} for i in errors[:5]]
            flags.add(item.index, "invalid_bio", shown, severity=len(errors))

    def _check_conflict(self, item: AuditItem, flags: Flags) -> None:
        keys = (item.index, hash(normalize(item.prompt or item.text)), hash(item.label))
        if self.deferred is not None:
            self.deferred.append(keys)
        else:
            self._compare(*keys, flags)

    def _compare(self, index: int, source: int, label: int, flags: Flags) -> None:
        first_index, first_label = self._first.setdefault(source, (index, label))
        if first_index == index or label == first_label:
            return
        self._conflict_groups.add(first_index)
        detail = {"first_with_input": first_index}
        flags.add(first_index, "label_conflict", detail)
        flags.add(index, "label_conflict", detail, severity=1.0)

    def merge(self, other: LabelMeter, flags: Flags) -> None:
        """Add a later shard's counts and compare its inputs with all earlier ones (see `sharded.py`)."""
        self.labelled += other.labelled
        for label, count in other.label_counts.items():  # admitted in stream order, as one pass does
            if len(self.label_counts) < MAX_LABELS or label in self.label_counts:
                self.label_counts[label] += count
        self.tag_counts.update(other.tag_counts)
        self.entity_counts.update(other.entity_counts)
        for keys in other.deferred:
            self._compare(*keys, flags)

    def finish(self, flags: Flags) -> dict:
        total_tags = sum(self.tag_counts.values())
        return {"labels": {
            "labelled_records": self.labelled,
            "label_distribution": dict(self.label_counts.most_common()) or None,
            "entity_distribution": dict(self.entity_counts.most_common()) or None,
            "outside_tag_fraction": self.tag_counts["O"] / total_tags if total_tags else None,
            "conflicting_inputs": len(self._conflict_groups),
            "conflicting_records": flags.counts["label_conflict"],
            "invalid_bio_records": flags.counts["invalid_bio"],
        }}


def bio_errors(tags: list[str]) -> list[int]:
    """Positions of I- tags that do not continue an entity of the same type."""
    errors = []
    previous = "O"
    for position, tag in enumerate(tags):
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            errors.append(position)
        previous = tag
    return errors
