"""report.html renders in a browser with working plots; report.json keys are documented."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from jaxlm.audit import AuditConfig, run_audit
from jaxlm.audit.report import SECTIONS

CHROMIUM = "/usr/bin/chromium"
REPORT_MD = os.path.join(os.path.dirname(__file__), "..", "jaxlm", "audit", "REPORT.md")

# Marks <body> once the page has loaded: ok:<count> when every image decoded.
_IMAGE_CHECK = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const ok = images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);
  document.body.setAttribute('data-images', ok ? 'ok:' + images.length : 'broken');
});
</script>"""


@pytest.fixture(scope="module")
def audit_out(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    rows = [{"text": f"record {i} talks about topic {i % 3} with words w{i} v{i} u{i}", "label": str(i % 2)}
            for i in range(30)]
    rows += [{"text": "record 1 talks about topic 1 with words w1 v1 u1", "label": "0"},
             {"text": "<script>alert('x')</script> the women were terrible and awful"},
             {"tokens": ["Ana", "lives"], "tags": ["I-PER", "O"]},
             {"prompt": "q", "completion": "a", "passage": "a b", "provenance": {"tokens_per_s": 9.0}}]
    files = {"data": rows, "eval": [{"text": "an eval item of several words here"}],
             "reference": [{"text": "a reference text"}]}
    for name, records in files.items():
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run_audit(AuditConfig(str(tmp / "data.jsonl"), out=str(tmp / "out"), evals=[str(tmp / "eval.jsonl")],
                          references=[str(tmp / "reference.jsonl")], model=None, embedder="tfidf",
                          progress=False))
    return tmp / "out"


def test_html_is_self_contained(audit_out):
    page = (audit_out / "report.html").read_text()
    assert not re.search(r"""(src|href)=['"](https?:|//)""", page)
    assert len(re.findall(r"<img [^>]*src='data:image/png;base64,", page)) >= 4


def test_html_escapes_record_text(audit_out):
    page = (audit_out / "report.html").read_text()
    assert "&lt;script&gt;alert(" in page and "<script>alert(" not in page


def test_html_says_lexicon_methods_are_screens(audit_out):
    assert "screens, not verdicts" in (audit_out / "report.html").read_text()


def test_html_shows_worst_examples_per_reason(audit_out):
    page = (audit_out / "report.html").read_text()
    for reason in ("duplicate", "label_conflict", "invalid_bio", "bias_term"):
        section = page.split(f"<h3>{reason}:")[1].split("<h3>")[0]
        assert "class='example'" in section


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium at /usr/bin/chromium")
def test_plots_render_in_headless_chromium(audit_out, tmp_path):
    page = tmp_path / "check.html"
    page.write_text((audit_out / "report.html").read_text().replace("</body>", _IMAGE_CHECK + "</body>"))
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
               page.as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    images = len(re.findall(r"<img ", page.read_text()))
    assert f'data-images="ok:{images}"' in dom


def _keys(node, prefix=""):
    """Dotted keys of report.json, without descending into per-value maps (groups, sources...)."""
    for key, value in node.items():
        yield prefix + key
        if isinstance(value, dict) and key not in {"groups", "categories", "sources", "by_model",
                                                    "label_distribution", "entity_distribution",
                                                    "size_histogram", "most_common", "top_terms",
                                                    "encoding_problems", "kinds", "by_reason",
                                                    "repeated_ngram_fraction", "histogram"}:
            yield from _keys(value, prefix + key + ".")


def _is_documented(key, doc):
    """`a.b` is written out, or `a` is and its field list names `b`; a section has a heading."""
    if f"`{key}`" in doc or f"`{key}." in doc or f"### {key}\n" in doc:
        return True
    parent, _, leaf = key.rpartition(".")
    return bool(parent) and _is_documented(parent, doc) and f"`{leaf}`" in doc


def test_every_report_key_is_documented(audit_out):
    doc = Path(REPORT_MD).read_text()
    report = json.loads((audit_out / "report.json").read_text())
    assert [k for k in _keys(report) if not _is_documented(k, doc)] == []


def test_report_has_every_section_in_a_stable_order(audit_out):
    report = json.loads((audit_out / "report.json").read_text())
    assert list(report) == ["schema_version", "input", "flags", *SECTIONS, "timing", "gates"]
