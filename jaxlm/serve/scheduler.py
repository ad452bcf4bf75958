"""Continuous batching: requests queue, take a free row between decode calls, and leave when done.

One background thread owns the `Engine` (all device work happens there). Each loop: end rows that
were cancelled (the client hung up) or ran past their deadline, admit waiting requests into free
rows, make room at the end of the cache if needed, decode `steps` tokens for every row, and hand
each request its new text. A request ends at a stop token, a stop string or `max_tokens`; its row
is free for the next request at once.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import jax
import numpy as np

from jaxlm.sampling.loop import prompt_bucket
from jaxlm.serve.engine import Engine

log = logging.getLogger("jaxlm.serve")


class QueueFull(Exception):
    """More requests wait than --max-queue allows (HTTP 429)."""


class Stopped(Exception):
    """The decode thread has failed (its traceback is in the log): nothing more can be served (HTTP 503)."""


@dataclasses.dataclass
class Event:
    """What one request produced since the last event: new tokens, their text, and how it ended."""

    index: int  # the choice this is for
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str | None = None  # "stop", "length", "cancelled", "timeout"


@dataclasses.dataclass
class Sequence:
    """One choice of one request: a prompt, how to sample it, and where its events go."""

    prompt_ids: list[int]
    max_tokens: int
    deliver: Callable[[Event], None]  # called from the scheduler thread
    index: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_ids: frozenset[int] = frozenset()
    stop_texts: tuple[str, ...] = ()
    deadline: float = float("inf")  # time.monotonic() after which it is ended
    submitted: float = dataclasses.field(default_factory=time.monotonic)
    cancelled: bool = False  # set by the request's handler when its client goes away
    # Filled in by the scheduler:
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    sent_text: str = ""
    sent_tokens: int = 0
    start: int = 0  # the cache slot of its first prompt token


class Scheduler:
    def __init__(self, model, tokenizer, *, max_batch: int, max_queue: int, max_context: int, pad_id: int,
                 steps: int = 4, metrics=None):
        self.tokenizer, self.max_queue, self.steps, self.metrics = tokenizer, max_queue, steps, metrics
        # Room for the longest prompt's bucket plus one decode call past a full context (see `_make_room`).
        self.engine = Engine(model, max_batch=max_batch, slots=prompt_bucket(max_context) + steps, steps=steps,
                             pad_id=pad_id)
        self.pad_id = pad_id
        self.index = 0  # the slot every row writes next (mirrors the engine's cache index)
        self.rows: list[Sequence | None] = [None] * max_batch
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.lock = threading.Condition()
        self.ready = threading.Event()
        self._stop = False
        self.failed = False  # the decode thread raised (a bug): nothing more is served
        self._thread = threading.Thread(target=self._run, name="jaxlm-serve-decode", daemon=True)

    # --- called from request handlers -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self.lock:
            self._stop = True
            self.lock.notify()
        self._thread.join()

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue a request's sequences together, or raise QueueFull without queueing any."""
        with self.lock:
            if self.failed:
                raise Stopped("the decode thread has failed; see the server's log")
            if len(self.waiting) + len(sequences) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (--max-queue {self.max_queue})")
            self.waiting.extend(sequences)
            self.lock.notify()
        self._gauges()

    def cancel(self, sequences: list[Sequence]) -> None:
        with self.lock:
            for sequence in sequences:
                sequence.cancelled = True
            self.lock.notify()

    @property
    def running(self) -> int:
        return sum(row is not None for row in self.rows)

    # --- the decode thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._warm_up()
            self.ready.set()
            while True:
                with self.lock:
                    while not self._stop and not self.waiting and self.running == 0:
                        self.lock.wait()
                    if self._stop:
                        break
                self._end_stale_rows()
                self._admit_waiting()
                if self.running:
                    self._make_room()
                    self._decode()
                self._gauges()
        except Exception:  # a bug: say so, and end every request rather than leave clients hanging
            log.exception("the decode thread failed; ending all requests")
            self.failed = True
            self._end_all("error")
            raise

    def _warm_up(self) -> None:
        """Compile admit (smallest bucket), decode and shift before /health says ready."""
        start = time.perf_counter()
        ids = np.full((1, prompt_bucket(1)), self.pad_id, np.int32)
        self.engine.admit(0, ids, np.ones_like(ids), ids.shape[1], 0.0, 1.0, jax.random.key(0))
        buckets = self.engine.row_buckets()
        for active in buckets:
            self.engine.decode(active)
        self.engine.shift(ids.shape[1] + self.steps * len(buckets))  # everything out: the cache starts empty
        log.info("compiled in %.1f s", time.perf_counter() - start)

    def _end_stale_rows(self) -> None:
        now = time.monotonic()
        with self.lock:
            for sequence in [s for s in self.waiting if s.cancelled or now > s.deadline]:
                self.waiting.remove(sequence)
                self._finish(sequence, "cancelled" if sequence.cancelled else "timeout")
        for row, sequence in enumerate(self.rows):
            if sequence is not None and (sequence.cancelled or now > sequence.deadline):
                self.rows[row] = None
                self._finish(sequence, "cancelled" if sequence.cancelled else "timeout")

    def _admit_waiting(self) -> None:
        for row in range(len(self.rows)):
            if self.rows[row] is not None:
                continue
            with self.lock:
                if not self.waiting:
                    break
                sequence = self.waiting.popleft()
            self._admit(row, sequence)
        self._gauges()

    def _admit(self, row: int, sequence: Sequence) -> None:
        prompt = sequence.prompt_ids
        padded = prompt_bucket(len(prompt))
        ids = np.full((1, padded), self.pad_id, np.int32)
        mask = np.zeros((1, padded), np.int32)
        ids[0, padded - len(prompt):], mask[0, padded - len(prompt):] = prompt, 1
        if self.index < padded:  # the prompt must end at `index`: move every row right to make room
            if self.running:  # (free when nothing runs: slots from `index` on are invalid in every row)
                self._shift(self.index - padded)
            self.index = padded
        key = jax.random.fold_in(jax.random.key(sequence.seed), sequence.index)  # n > 1: choices differ
        token, logprob = self.engine.admit(row, ids, mask, self.index, sequence.temperature, sequence.top_p, key)
        sequence.start = self.index - len(prompt)
        self.rows[row] = sequence
        if self.metrics:
            self.metrics.time_to_first_token.observe(time.monotonic() - sequence.submitted)
        self._take(row, [token], [logprob])

    def _make_room(self) -> None:
        """Before `index` runs past the last slot, shift out the slots older than every running prompt.
        A request needs at most max_context slots, so this always frees a decode call's worth."""
        if self.index + self.steps > self.engine.slots:
            self._shift(min(s.start for s in self.rows if s is not None))

    def _shift(self, amount: int) -> None:
        """Move every row `amount` slots left (right if negative): no row's span from its first prompt
        slot to `index` changes, so a running request never needs more than max_context slots."""
        log.debug("rows shift %d slots %s", abs(amount), "left" if amount > 0 else "right")
        self.engine.shift(amount)
        self.index -= amount
        for sequence in self.rows:
            if sequence is not None:
                sequence.start -= amount

    def _decode(self) -> None:
        start = time.perf_counter()
        last_row = max(row for row, sequence in enumerate(self.rows) if sequence is not None)
        active = next(b for b in self.engine.row_buckets() if b > last_row)  # rows are taken lowest first
        tokens, logprobs = self.engine.decode(active)
        self.index += self.steps
        seconds = time.perf_counter() - start
        if self.metrics:
            self.metrics.tokens_per_second.set(self.running * self.steps / seconds)
        for row, sequence in enumerate(self.rows):
            if sequence is not None:
                self._take(row, tokens[row].tolist(), logprobs[row].tolist())

    def _take(self, row: int, tokens: list[int], logprobs: list[float]) -> None:
        """Add a row's new tokens up to where it ends; send the new text; free the row if it ended."""
        sequence, finish = self.rows[row], None
        assert sequence is not None
        for token, logprob in zip(tokens, logprobs, strict=True):
            sequence.token_ids.append(token)
            sequence.logprobs.append(logprob)
            if token in sequence.stop_ids:
                finish = "stop"
            elif len(sequence.token_ids) >= sequence.max_tokens:
                finish = "length"
            if finish:
                break
        if self.metrics:
            self.metrics.generated_tokens.inc(len(sequence.token_ids) - sequence.sent_tokens)
        ids = sequence.token_ids[:-1] if finish == "stop" else sequence.token_ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in sequence.stop_texts) if i >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        elif not finish:
            text = _settled(text, sequence.stop_texts)
        if finish:
            self.rows[row] = None
        self._send(sequence, text, finish)

    def _send(self, sequence: Sequence, text: str, finish: str | None) -> None:
        new_text = text[len(sequence.sent_text):] if text.startswith(sequence.sent_text) else ""
        new_tokens = slice(sequence.sent_tokens, len(sequence.token_ids))
        if new_text or finish or (new_tokens.stop > new_tokens.start and not sequence.stop_texts):
            sequence.deliver(Event(sequence.index, sequence.token_ids[new_tokens], sequence.logprobs[new_tokens],
                                   new_text, finish))
            sequence.sent_text += new_text
            sequence.sent_tokens = len(sequence.token_ids)
        if finish and self.metrics:
            self.metrics.finished.labels(finish).inc()

    def _finish(self, sequence: Sequence, reason: str) -> None:
        self._send(sequence, sequence.sent_text, reason)

    def _end_all(self, reason: str) -> None:
        with self.lock:
            ended = [s for s in self.rows if s is not None] + list(self.waiting)
            self.rows = [None] * len(self.rows)
            self.waiting.clear()
        for sequence in ended:
            self._finish(sequence, reason)

    def _gauges(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(len(self.waiting))
            self.metrics.running.set(self.running)


def _settled(text: str, stop_texts: tuple[str, ...]) -> str:
    """The part of a growing text that can be sent now: not a half-decoded character (U+FFFD at the end)
    and not an end that may turn out to start a stop string."""
    text = text.rstrip("\ufffd")
    for stop in stop_texts:
        for length in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:length]):
                text = text[:-length]
                break
    return text
