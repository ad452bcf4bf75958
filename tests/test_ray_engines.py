"""`--engine ray` gives what the local engine gives, for synthesis and for the audit (2 local Ray workers).

One Ray cluster for the module: starting one takes seconds.
"""

import json
import os
import random
import subprocess
import sys

import pytest

from jaxlm.audit import AuditConfig, run_audit
from jaxlm.synth.cli import main as synth
from synth_helpers import tiny_synth_model
from test_audit_planted import _planted_dataset, _write_jsonl
from test_synth_run import SEED_TASKS, lines, without_timing

ray = pytest.importorskip("ray")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster():
    from jaxlm.cluster import worker_env

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": worker_env()})
    yield worker_env()
    ray.shutdown()


def test_synthesis_on_two_ray_workers_equals_the_local_engine(cluster, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in SEED_TASKS))
    model = tiny_synth_model(tmp_path / "model")

    def run(out, *engine):
        return synth(["self-instruct", "--model", model, "--seeds", str(seeds), "--out", str(out), "--num", "6",
                      "--batch-size", "4", "--max-new-tokens", "8", "--instruction-tokens", "8",
                      "--examples-per-prompt", "2", "--temperature", "1.0", "--top-p", "1.0", "--rounds", "2",
                      "--no-filter", "truncated", "--filter", "min_instruction_words=1", "--quiet", *engine])

    assert run(tmp_path / "local") == 0
    assert run(tmp_path / "ray", "--engine", "ray", "--workers", "2") == 0
    for name in ("data.jsonl", "rejected.jsonl"):
        assert without_timing(lines(tmp_path / "ray" / name)) == without_timing(lines(tmp_path / "local" / name))
    local, distributed = (json.loads((tmp_path / run_dir / "summary.json").read_text()) for run_dir in ("local", "ray"))
    for key in ("generated", "kept", "rejected", "new_tokens", "rounds"):
        assert distributed[key] == local[key], key
    assert distributed["engine"] == "ray" and distributed["workers"] == 2


def _without_timing(report):
    report.pop("timing")
    return report


def _assert_same(a, b, path="report"):
    """Equal, except float sums, which a sharded run adds up in another order."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_a_sharded_audit_on_ray_writes_the_report_of_one_pass(cluster, tmp_path):
    """Planted problems straddle three shard files (duplicates, contradictions, label conflicts across
    files). The local audit runs as a command with the workers' hash seed, as the same run would."""
    records, expected, evals, references = _planted_dataset()
    order = list(range(len(records)))
    random.Random(0).shuffle(order)
    (tmp_path / "data").mkdir()
    third = len(order) // 3
    for k, part in enumerate((order[:third], order[third:2 * third], order[2 * third:])):
        _write_jsonl(tmp_path / "data" / f"part{k}.jsonl", [records[i] for i in part])
    options = ["--eval", _write_jsonl(tmp_path / "eval.jsonl", evals),
               "--reference", _write_jsonl(tmp_path / "reference.jsonl", references),
               "--model", "none", "--embedder", "tfidf", "--quiet"]
    local = subprocess.run([sys.executable, "-m", "jaxlm.audit", str(tmp_path / "data"), *options,
                            "--out", str(tmp_path / "local")], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": cluster["PYTHONHASHSEED"]})
    assert local.returncode == 0, local.stderr
    result = run_audit(AuditConfig(
        data=str(tmp_path / "data"), out=str(tmp_path / "ray"), evals=[str(tmp_path / "eval.jsonl")],
        references=[str(tmp_path / "reference.jsonl")], model=None, embedder="tfidf", progress=False,
        engine="ray", workers=2))
    for name in ("flagged.jsonl", "clean.jsonl"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text()
    _assert_same(_without_timing(result.report),
                 _without_timing(json.loads((tmp_path / "local" / "report.json").read_text())))
    flagged_reasons = {reason for f in lines(tmp_path / "ray" / "flagged.jsonl") for reason in f["reasons"]}
    assert flagged_reasons == set().union(*expected.values())  # every planted problem is in the comparison
