"""The output folder of a run, written as it goes so that a killed run resumes exactly.

``data.jsonl`` and ``rejected.jsonl`` only ever grow, a batch at a time. After each batch
their lines are flushed to disk and then ``state.json`` is replaced (atomically) with the
new file sizes, counters and batch position. A rerun of the same command truncates the two
files to the sizes in ``state.json`` (dropping lines of a batch that was being written when
the process died) and continues from the next batch. Batches are deterministic, so the
lines that were dropped are generated again, identically: no duplicates, nothing lost.
"""

from __future__ import annotations

import json
import os
from collections import Counter

from jaxlm.errors import warn
from jaxlm.synth.config import FILTERS, RESUMABLE_CHANGES, SynthConfig, SynthError

DATA, REJECTED, STATE, SUMMARY = "data.jsonl", "rejected.jsonl", "state.json", "summary.json"
VERSION = 1


class RunState:
    """Counters and position of a run, and the two append-only files it writes."""

    def __init__(self, out: str, config: dict):
        self.out, self.config = out, config
        self.batches_done = self.generated = self.kept = self.since_kept = 0
        self.rejected: Counter[str] = Counter()
        self.new_tokens = self.prompt_tokens = 0
        self.generation_seconds = self.wall_seconds = 0.0
        self.round: dict | None = None  # the round being run (see the modes' plan())
        self.rounds: list[dict] = []  # kept and generated per finished round
        self.sizes = {DATA: 0, REJECTED: 0}
        self._files = {}

    # --- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, config: SynthConfig) -> RunState:
        """A fresh state, or the state of the run already in ``config.out`` (checked to match); nothing
        is written until `start`, so a run refused later (a model that cannot load) leaves --out as it was."""
        if os.path.exists(config.out) and not os.path.isdir(config.out):
            raise SynthError(f"--out {config.out}: is a file; the output is a folder")
        state = cls(config.out, config.to_dict())
        path = os.path.join(config.out, STATE)
        if os.path.exists(path):
            state._restore(path)
        elif any(os.path.exists(os.path.join(config.out, name)) for name in (DATA, REJECTED)):
            raise SynthError(f"{config.out}: holds {DATA} but no {STATE}; not a run that can resume "
                             "(use an empty --out)")
        return state

    def start(self) -> None:
        """Create --out and open the two files for appending, without the lines of a batch that never committed."""
        os.makedirs(self.out, exist_ok=True)
        for name in (DATA, REJECTED):
            path = os.path.join(self.out, name)
            with open(path, "ab") as f:
                torn = f.tell() - self.sizes[name]
                f.truncate(self.sizes[name])
            if torn > 0 and name == DATA:
                warn(f"{path}: dropped the {torn} bytes of a batch that was being written when the run stopped; "
                     "that batch is generated again, identically")
            self._files[name] = open(path, "a", encoding="utf-8")  # noqa: SIM115  closed by close()

    def _restore(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:  # it is replaced whole, never torn: edited or damaged
            raise SynthError(f"{path}: not a readable run state ({e}); use an empty --out") from None
        if not isinstance(saved, dict) or saved.get("version") != VERSION:
            raise SynthError(f"{path}: written by another version of jaxlm.synth (use an empty --out)")
        try:
            old, new = _flat(saved["config"]), _flat(json.loads(json.dumps(self.config)))
            for key in sorted(set(old) | set(new)):
                if key not in RESUMABLE_CHANGES and old.get(key) != new.get(key):
                    raise SynthError(f"{path}: this folder holds a run made with {key}={old.get(key)!r}, not "
                                     f"{new.get(key)!r}; rerun with the same options to resume, or use another --out")
            for key in ("batches_done", "generated", "kept", "since_kept", "new_tokens", "prompt_tokens",
                        "generation_seconds", "wall_seconds", "round", "rounds", "sizes"):
                setattr(self, key, saved[key])
            self.rejected = Counter(saved["rejected"])
            sizes = {name: int(self.sizes[name]) for name in (DATA, REJECTED)}
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            if isinstance(e, SynthError):
                raise
            raise SynthError(f"{path}: not a readable run state (missing or odd {e}); use an empty --out") from None
        self.sizes = sizes
        for name, size in self.sizes.items():
            file = os.path.join(self.out, name)
            actual = os.path.getsize(file) if os.path.exists(file) else 0
            if actual < size:
                raise SynthError(f"{os.path.join(self.out, name)}: shorter ({actual} bytes) than {STATE} "
                                 f"records ({size}); the folder was edited, use an empty --out")

    def kept_records(self):
        """The records kept so far, in order (read back from the committed part of data.jsonl)."""
        path = os.path.join(self.out, DATA)
        if not self.sizes[DATA]:
            return
        read = 0
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                read += len(line)
                if read > self.sizes[DATA]:  # the torn tail of a batch that never committed
                    return
                try:
                    yield json.loads(line)
                except ValueError as e:  # UnicodeDecodeError included
                    raise SynthError(f"{path}:{number}: not a JSON record ({e}); the folder was edited, "
                                     "use an empty --out") from None

    # --- committing ---------------------------------------------------------------------

    def commit(self, kept: list[dict], rejected: list[dict], counts: dict, seconds: float) -> None:
        """Make one batch durable: its lines, then the state that counts them."""
        for name, records in ((DATA, kept), (REJECTED, rejected)):
            f = self._files[name]
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            self.sizes[name] = f.tell()
        self.batches_done += 1
        self.generated += counts["generated"]
        self.kept += len(kept)
        self.rejected.update(r["provenance"]["rejected_by"] for r in rejected)
        self.new_tokens += counts["new_tokens"]
        self.prompt_tokens += counts["prompt_tokens"]
        self.generation_seconds += counts["generation_seconds"]
        self.since_kept = counts["since_kept"]
        self.wall_seconds += seconds
        self._write(STATE, self._saved())

    def end_round(self) -> None:
        """Note the finished round's figures in state.json (the last round has no commit after it: a rerun of
        the finished run would lose it)."""
        if self.round is not None and all(r["round"] != self.round["number"] for r in self.rounds):
            self.rounds.append({"round": self.round["number"],
                                "generated": self.generated - self.round["generated_at_start"],
                                "kept": self.kept - self.round["kept_at_start"]})
            self._write(STATE, self._saved())

    def _saved(self) -> dict:
        return {"version": VERSION, "config": self.config, "batches_done": self.batches_done,
                "generated": self.generated, "kept": self.kept, "since_kept": self.since_kept,
                "rejected": dict(self.rejected), "new_tokens": self.new_tokens,
                "prompt_tokens": self.prompt_tokens, "generation_seconds": self.generation_seconds,
                "wall_seconds": self.wall_seconds, "round": self.round, "rounds": self.rounds,
                "sizes": self.sizes}

    def _write(self, name: str, obj: dict) -> None:
        path = os.path.join(self.out, name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)

    # --- summary ------------------------------------------------------------------------

    def summary(self, complete: bool, extra: dict) -> dict:
        generated = max(self.generated, 1)
        summary = {
            "mode": self.config["mode"], "complete": complete, "requested": self.config["num"],
            "generated": self.generated, "kept": self.kept,
            "acceptance_rate": self.kept / generated,
            "rejected": {name: self.rejected.get(name, 0) for name in FILTERS},
            "rejected_share": {name: self.rejected.get(name, 0) / generated for name in FILTERS},
            "new_tokens": self.new_tokens, "prompt_tokens": self.prompt_tokens,
            "generation_seconds": self.generation_seconds,
            "new_tokens_per_s": self.new_tokens / self.generation_seconds if self.generation_seconds else None,
            "wall_seconds": self.wall_seconds,
            "wall_new_tokens_per_s": self.new_tokens / self.wall_seconds if self.wall_seconds else None,
            "rounds": self.rounds, **extra,
        }
        self._write(SUMMARY, summary)
        return summary

    def close(self) -> None:
        for f in self._files.values():
            f.close()


def _flat(config: dict, prefix: str = "") -> dict:
    """``{"filters": {"novelty_rouge": 0.7}}`` -> ``{"filters.novelty_rouge": 0.7}``."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
