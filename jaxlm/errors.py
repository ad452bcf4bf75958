"""Errors a user can act on, and the exit status every jaxlm command returns.

    0    done
    2    bad input or config: one line on stderr naming the file:line or the key, no traceback
    3    stopped: a --fail-on gate failed, or the loss went non-finite
    130  interrupted (Ctrl-C)

Library code raises a subclass of `UserError` (exit 2) or `Stopped` (exit 3) where it finds
the problem; each command's `main` is wrapped in `exit_codes`, the one place that turns them
into a line on stderr and a status. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys

DONE, BAD_INPUT, STOPPED, INTERRUPTED = 0, 2, 3, 130


class UserError(ValueError):
    """Bad input or config that the user can fix; the message names the file:line or the key."""

    label = "error"  # how the line on stderr starts


class ConfigError(UserError):
    """A bad config key or value; the message names the dotted key."""

    label = "config error"


class Stopped(RuntimeError):
    """The work started but was stopped on purpose: a quality gate failed or the loss went non-finite."""

    label = "stopped"


def exit_codes(main):
    """Wraps a command's `main(argv, ...) -> int | None` so it returns the status above.

    `UserError` (and `FileNotFoundError`, a path the user gave) -> 2, `Stopped` -> 3,
    KeyboardInterrupt -> 130, each as one line on stderr. argparse already exits with 2
    on a bad option.
    """

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or DONE
        except (UserError, FileNotFoundError, Stopped, KeyboardInterrupt) as e:
            line, status = outcome(e)
            print(line, file=sys.stderr, flush=True)
            return status

    return run


def outcome(error: BaseException) -> tuple[str, int] | None:
    """(the one line on stderr, the exit status) for an error a user can act on; None for a bug."""
    if isinstance(error, UserError):
        label, message, status = error.label, error, BAD_INPUT
    elif isinstance(error, FileNotFoundError):
        label, status = "error", BAD_INPUT
        message = f"{error.filename}: no such file or folder" if error.filename else error
    elif isinstance(error, Stopped):
        label, message, status = error.label, error, STOPPED
    elif isinstance(error, KeyboardInterrupt):
        label, message, status = "interrupted", "stopped by the user", INTERRUPTED
    else:
        return None
    text = " ".join(str(message).split("\n"))  # one line, whatever the message held
    return f"{label}: {text}", status
