"""The audit streams: peak memory does not follow the size of the file.

Records are read three times instead of held; what does grow is a few KB of
index per record (MinHash signature, LSH buckets, hashes), far less than one
record of a few hundred words costs as Python objects.
"""

import json
import random
import tracemalloc

from jaxlm.audit import AuditConfig, run_audit

BASE_RECORDS = 60
WORDS_PER_RECORD = 200  # ~1.5 KB of JSON; held as Python strings and word lists, ~14 KB
MAX_BYTES_PER_EXTRA_RECORD = 8_000


def _write(path, records, rng):
    vocabulary = [f"w{i}" for i in range(5000)]
    with open(path, "w") as f:
        for _ in range(records):
            f.write(json.dumps({"prompt": " ".join(rng.choices(vocabulary, k=12)),
                                "completion": " ".join(rng.choices(vocabulary, k=WORDS_PER_RECORD))}) + "\n")
    return str(path)


def _config(path, out):
    # A small fixed self-BLEU sample: full in both runs, so it cannot hide or cause growth.
    return AuditConfig(path, out=str(out), model=None, embedder=None, progress=False, self_bleu_sample=20)


def _peak_bytes(path, out):
    config = _config(path, out)
    tracemalloc.start()
    try:
        run_audit(config)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_grows_far_less_than_the_file(tmp_path):
    rng = random.Random(0)
    small = _write(tmp_path / "small.jsonl", BASE_RECORDS, rng)
    large = _write(tmp_path / "large.jsonl", 10 * BASE_RECORDS, rng)
    run_audit(_config(small, tmp_path / "warmup"))  # first use imports modules and loads lexicons

    small_peak = _peak_bytes(small, tmp_path / "small")
    large_peak = _peak_bytes(large, tmp_path / "large")

    assert large_peak < 4 * small_peak
    per_extra_record = (large_peak - small_peak) / (9 * BASE_RECORDS)
    assert per_extra_record < MAX_BYTES_PER_EXTRA_RECORD
