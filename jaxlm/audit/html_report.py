"""report.html: one self-contained page (inline CSS, plots as base64 PNG, no scripts).

Each section shows its figures from report.json, its plots, and the worst
flagged records of each reason that belongs to it.
"""

from __future__ import annotations

import html
import json

from jaxlm.audit import plots
from jaxlm.audit.bias import SCREEN_NOTE
from jaxlm.audit.flags import REASONS, Flags
from jaxlm.text.words import snippet

# Which flag reasons are shown under which section.
SECTION_REASONS = {
    "duplication": ("duplicate", "near_duplicate"),
    "contamination": ("contamination",),
    "authenticity": ("high_perplexity", "reference_copy", "unsupported_answer"),
    "consistency": ("repetition", "encoding", "contradiction"),
    "bias": ("bias_term", "toxicity"),
    "labels": ("label_conflict", "invalid_bio"),
    "diversity": (),
    "generation": (),
}
_SKIPPED_KEYS = {"histogram", "records", "size_histogram", "note", "clusters", "most_common", "groups"}

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{border-bottom:2px solid #3a6ea5;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top;font-size:.9em} th{background:#eef2f7}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:.6em 1em}
.fail{color:#b00020;font-weight:bold} .ok{color:#1b7a1b}
.example{border:1px solid #ddd;border-radius:4px;padding:.5em;margin:.4em 0;background:#fafafa}
.example pre{white-space:pre-wrap;margin:.3em 0 0;font-size:.85em}
img{max-width:100%;display:block;margin:.5em 0}
"""


def render(report: dict, flags: Flags, examples: dict[int, str]) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>Data audit: {_e(report['input']['path'])}</title><style>{_CSS}</style></head><body>",
             f"<h1>Data audit: {_e(report['input']['path'])}</h1>",
             "<p>" + " · ".join(f"<a href='#{s}'>{s}</a>" for s in SECTION_REASONS) + "</p>",
             _summary(report)]
    for section, reasons in SECTION_REASONS.items():
        parts.append(f"<h2 id='{section}'>{section.capitalize()}</h2>")
        data = report.get(section)
        if section == "bias":
            parts.append(f"<p class='note'>{_e(SCREEN_NOTE)}</p>")
        if data is None:
            parts.append("<p>Not measured in this run.</p>")
        else:
            parts.append(_figures_table(data))
            parts.extend(f"<img alt='{_e(alt)}' src='data:image/png;base64,{png}'>"
                         for alt, png in _section_plots(section, data) if png)
        for reason in reasons:
            parts.append(_examples(reason, flags, examples))
    parts.append("</body></html>")
    return "\n".join(parts)


def _summary(report: dict) -> str:
    summary = report["flags"]
    rows = [("records", report["input"]["records"]), ("flagged records", summary["flagged_records"]),
            ("removed from clean.jsonl", f"{summary['removed_records']} "
                                         f"(reasons: {', '.join(summary['remove_reasons']) or 'none'})"),
            ("unreadable records skipped", report["input"]["skipped"])]
    rows += [(f"flag: {reason}", n) for reason, n in summary["by_reason"].items() if n]
    text = "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"
    if report.get("gates"):
        text += "<h3>Gates</h3><table>" + "".join(
            f"<tr><td>{_e(g['gate'])}</td><td>{_e(g['value'])}</td>"
            f"<td class='{'fail' if g['failed'] else 'ok'}'>{'FAILED' if g['failed'] else 'passed'}</td></tr>"
            for g in report["gates"]) + "</table>"
    return text


def _figures_table(data: dict) -> str:
    rows = list(_flatten(data))
    if not rows:
        return ""
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(_format(v))}</td></tr>" for k, v in rows) + "</table>"


def _flatten(data: dict, prefix: str = ""):
    for key, value in data.items():
        if key in _SKIPPED_KEYS:
            continue
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)[:300]
    return "—" if value is None else str(value)


def _section_plots(section: str, data: dict):
    if section == "consistency":
        yield "record lengths", plots.histogram(data["length_words"]["histogram"], "Record length",
                                                "words per record")
    elif section == "authenticity" and data.get("perplexity"):
        yield "perplexity", plots.histogram(data["perplexity"]["histogram"], "Perplexity per record",
                                            "perplexity (log scale)", log_x=True)
    elif section == "duplication":
        for kind in ("exact", "near"):
            sizes = data[f"{kind}_clusters"]["size_histogram"]
            yield f"{kind} duplicate clusters", plots.bars(
                {f"size {s}": n for s, n in sizes.items()}, f"{kind.capitalize()}-duplicate clusters by size",
                "clusters")
    elif section == "bias":
        for category, info in data["categories"].items():
            sentiment = {g: v["mean_context_sentiment"] for g, v in info["groups"].items() if v["mentions"]}
            yield f"{category} context sentiment", plots.bars(
                sentiment, f"{category}: mean AFINN sentiment around mentions", "sentiment")
    elif section == "labels":
        distribution = data.get("label_distribution") or data.get("entity_distribution")
        yield "labels", plots.bars(dict(list((distribution or {}).items())[:25]), "Label distribution",
                                   "records (entities for NER)")
    elif section == "diversity" and data.get("topics"):
        clusters = data["topics"]["clusters"]
        yield "topics", plots.bars({", ".join(c["keywords"][:3]) or f"cluster {i}": c["share"]
                                    for i, c in enumerate(clusters)},
                                   f"Topic clusters ({data['topics']['embedder']})", "share of sample")


def _examples(reason: str, flags: Flags, examples: dict[int, str]) -> str:
    worst = flags.worst(reason)
    count = flags.counts[reason]
    title = (f"<h3>{_e(reason)}: {count} record{'' if count == 1 else 's'}</h3>"
             f"<p><i>{_e(REASONS[reason])}</i></p>")
    if not worst:
        return title + "<p>None flagged.</p>"
    cards = [f"<p>The {len(worst)} most severe:</p>"] if count > len(worst) else []
    for index in worst:
        detail = json.dumps(flags.reasons_of(index).get(reason), ensure_ascii=False)
        cards.append(f"<div class='example'><b>record {index}</b> {_e(detail[:400])}"
                     f"<pre>{_e(snippet(examples.get(index, ''), 600))}</pre></div>")
    return title + "".join(cards)


def _e(value) -> str:
    return html.escape(str(value))
