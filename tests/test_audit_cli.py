"""`python -m jaxlm.audit`: options, gates (--fail-on), and errors a user can act on."""

import json
import subprocess
import sys

import pytest

from jaxlm.audit.cli import build_parser, config_from_args, main
from jaxlm.audit.config import AuditConfig
from jaxlm.audit.flags import REASONS
from jaxlm.errors import BAD_INPUT, STOPPED

FAST = ["--model", "none", "--embedder", "none", "--quiet"]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"text": "alpha beta gamma delta"}, {"text": "alpha beta gamma delta"},
            {"text": "epsilon zeta eta theta iota"}, {"text": "kappa lambda mu nu xi omicron"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_help_explains_every_option_and_flag_reason():
    result = subprocess.run([sys.executable, "-m", "jaxlm.audit", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--reference", "--eval", "--model", "--out", "--fail-on", "--remove", "--embedder"):
        assert option in result.stdout
    for reason in REASONS:
        assert reason in result.stdout


def test_command_defaults_are_the_library_defaults():
    assert config_from_args(build_parser().parse_args(["data.jsonl"])) == AuditConfig("data.jsonl")


def test_writes_all_four_outputs(data, tmp_path):
    out = tmp_path / "out"
    assert main([data, "--out", str(out), *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clean.jsonl", "flagged.jsonl", "report.html",
                                                     "report.json"]


def test_failing_gate_exits_3_and_says_which(data, tmp_path, capsys):
    code = main([data, "--out", str(tmp_path / "o"), *FAST, "--fail-on", "duplication.exact_fraction>0.05"])
    assert code == STOPPED
    assert "gate failed: duplication.exact_fraction>0.05 (value: 0.25)" in capsys.readouterr().err
    gates = json.loads((tmp_path / "o" / "report.json").read_text())["gates"]
    assert gates == [{"gate": "duplication.exact_fraction>0.05", "value": 0.25, "failed": True, "why": None}]


def test_passing_gate_exits_0(data, tmp_path):
    assert main([data, "--out", str(tmp_path / "o"), *FAST, "--fail-on", "duplication.exact_fraction>=0.5"]) == 0


def test_gate_on_a_figure_not_measured_fails(data, tmp_path):
    code = main([data, "--out", str(tmp_path / "o"), *FAST, "--fail-on", "authenticity.perplexity.p50>100"])
    assert code == STOPPED


def test_gate_on_unknown_key_names_the_keys_that_exist(data, tmp_path, capsys):
    code = main([data, "--out", str(tmp_path / "o"), *FAST, "--fail-on", "duplication.exact_fractoin>0.1"])
    assert code == BAD_INPUT
    err = capsys.readouterr().err
    assert "no key 'exact_fractoin' under duplication" in err and "exact_fraction" in err


def test_malformed_gate_is_rejected_before_auditing(data, tmp_path, capsys):
    assert main([data, "--out", str(tmp_path / "o"), *FAST, "--fail-on", "duplication"]) == BAD_INPUT
    assert "expected KEY>VALUE" in capsys.readouterr().err


def test_bad_json_line_is_reported_with_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "broken\n')
    assert main([str(path), "--out", str(tmp_path / "o"), *FAST]) == BAD_INPUT
    err = capsys.readouterr().err
    assert f"{path}:2: malformed JSON" in err and "Traceback" not in err


def test_skip_bad_counts_unreadable_records_instead_of_stopping(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine words here"}\n{"nope": 1}\n{"text": "more fine words"}\n')
    assert main([str(path), "--out", str(tmp_path / "o"), *FAST, "--skip-bad"]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["input"]["records"] == 2 and report["input"]["skipped"] == 1


def test_missing_data_file_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"), *FAST]) == BAD_INPUT
    assert "nope.jsonl: no such file" in capsys.readouterr().err


def test_unknown_remove_reason_is_rejected(data, tmp_path, capsys):
    assert main([data, "--out", str(tmp_path / "o"), *FAST, "--remove", "duplicate,typo"]) == BAD_INPUT
    assert "unknown reason(s) ['typo']" in capsys.readouterr().err


def test_remove_chooses_what_clean_jsonl_drops(data, tmp_path):
    main([data, "--out", str(tmp_path / "kept"), *FAST, "--remove", "none"])
    main([data, "--out", str(tmp_path / "dropped"), *FAST, "--remove", "duplicate"])
    assert len((tmp_path / "kept" / "clean.jsonl").read_text().splitlines()) == 4
    assert len((tmp_path / "dropped" / "clean.jsonl").read_text().splitlines()) == 3
