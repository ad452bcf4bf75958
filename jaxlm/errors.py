"""Errors a user can act on, and the exit status every jaxlm command returns.

    0    done
    2    bad input or config: one line on stderr naming the file:line or the key, no traceback
    3    stopped part-way, keeping what was saved: a --fail-on gate failed, the loss went
         non-finite, or the disk filled up (the last good checkpoint is kept; re-run to resume)
    130  interrupted (Ctrl-C; in training, after the step under way: see `interrupts_between`)

Library code raises a subclass of `UserError` (exit 2) or `Stopped` (exit 3) where it finds
the problem; each command's `main` is wrapped in `exit_codes`, the one place that turns them
into a line on stderr and a status. An `OSError` that names a path the user gave (missing,
not permitted, read-only) is bad input too; a full disk stops the work. Anything else is a
bug and keeps its traceback. `warn` says something the user should know without stopping
the work: one `warning: ...` line on stderr under `exit_codes`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import os
import signal
import sys
import threading
import warnings

DONE, BAD_INPUT, STOPPED, INTERRUPTED = 0, 2, 3, 130


class UserError(ValueError):
    """Bad input or config that the user can fix; the message names the file:line or the key."""

    label = "error"  # how the line on stderr starts


class ConfigError(UserError):
    """A bad config key or value; the message names the dotted key."""

    label = "config error"


class Stopped(RuntimeError):
    """The work started but was stopped: a quality gate failed, the loss went non-finite, the disk filled up."""

    label = "stopped"


class DiskFull(Stopped):
    """No space left on the device while writing; what was written before is kept."""


class JaxlmWarning(UserWarning):
    """Something the user should know that does not stop the work (a truncated record, an odd setting)."""


def warn(message: str) -> None:
    """One `warning: message` line on stderr (under `exit_codes`); shown once per call site and message."""
    warnings.warn(message, JaxlmWarning, stacklevel=2)


def exit_codes(main):
    """Wraps a command's `main(argv, ...) -> int | None` so it returns the status above.

    `UserError` (and an `OSError` naming a path the user gave) -> 2, `Stopped` (and no space
    left on the device) -> 3, KeyboardInterrupt -> 130, each as one line on stderr. argparse
    already exits with 2 on a bad option.
    """

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(warnings.showwarning)
            try:
                return main(*args, **kwargs) or DONE
            except (UserError, Stopped, OSError, KeyboardInterrupt) as e:
                found = outcome(e)
                if found is None:
                    raise  # an OSError not about a path the user named: a bug, keep its traceback
                line, status = found
                print(line, file=sys.stderr, flush=True)
        # Out of the except block, the interrupted work (tf.data iterators, XLA executables) is garbage in
        # reference cycles. Collected now, while the runtime is whole; left to interpreter exit, their
        # destructors deadlocked (seen: a hang in the final collection, 130 never reached).
        gc.collect()
        return status

    return run


def _show_warning(show_other):
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, JaxlmWarning):
            print(f"warning: {_one_line(message)}", file=sys.stderr, flush=True)
        else:
            show_other(message, category, filename, lineno, file, line)

    return show


def _one_line(message) -> str:
    return " ".join(str(message).split("\n"))


def outcome(error: BaseException) -> tuple[str, int] | None:
    """(the one line on stderr, the exit status) for an error a user can act on; None for a bug."""
    if isinstance(error, UserError):
        label, message, status = error.label, error, BAD_INPUT
    elif isinstance(error, Stopped):
        label, message, status = error.label, error, STOPPED
    elif isinstance(error, OSError) and error.errno == errno.ENOSPC:
        label, status = "stopped", STOPPED
        message = f"no space left on device writing {error.filename or 'a file'}"
    elif isinstance(error, OSError) and error.filename is not None:
        reason = "no such file or folder" if isinstance(error, FileNotFoundError) else error.strerror or str(error)
        label, message, status = "error", f"{error.filename}: {reason[:1].lower()}{reason[1:]}", BAD_INPUT
    elif isinstance(error, FileNotFoundError):  # raised with a message only, e.g. "PATH: no such file"
        label, message, status = "error", error, BAD_INPUT
    elif isinstance(error, KeyboardInterrupt):
        label, message, status = "interrupted", "stopped by the user", INTERRUPTED
    else:
        return None
    return f"{label}: {_one_line(message)}", status


@contextlib.contextmanager
def give_up_after(seconds: float, message: str):
    """Ends the process with exit 2 and `error: message` if the block outlasts `seconds`: for waits that
    block in C++ (JAX's coordinator, Ray's connect), where no Python exception reaches them. No atexit
    hooks run: they would wait for the same peer."""
    def give_up():
        print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)
        os._exit(BAD_INPUT)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


_interrupt_noted = threading.Event()


@contextlib.contextmanager
def interrupts_between(notice: str):
    """Inside the block a Ctrl-C is noted, not raised: `raise_if_interrupted()` raises it where the work can stop
    whole (the training loop calls it after each step it dispatches), and `notice` goes to stderr at once so the
    user knows it was heard. Python's own handler raises KeyboardInterrupt at whatever bytecode runs next, and
    when that is a finalizer (a `__del__`, a weakref callback, run by a garbage collection mid-step) Python
    prints it and carries on: a run that ignores its Ctrl-C (the likely cause of a test's run found still in its
    loop 300 s after SIGINT). A second Ctrl-C raises at once, for a block stuck where no check comes. Off the
    main thread, or where SIGINT is ignored, the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, None):  # ignored (a background job), or a handler set outside Python
        yield
        return
    second = previous if callable(previous) else signal.default_int_handler

    def note(signum, frame):
        _interrupt_noted.set()
        signal.signal(signal.SIGINT, second)
        with contextlib.suppress(OSError):  # to fd 2 itself: the interrupted code may be mid-write to sys.stderr
            os.write(2, f"\ninterrupt: {notice} (Ctrl-C again to stop at once)\n".encode())

    _interrupt_noted.clear()
    signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    raise_if_interrupted()  # noted after the block's last check: the work ended whole, the user still asked


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if a Ctrl-C was noted inside `interrupts_between()`."""
    if _interrupt_noted.is_set():
        _interrupt_noted.clear()
        raise KeyboardInterrupt
