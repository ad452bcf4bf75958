"""Writing what a command produces: never over something that exists unless asked, never half-written.

    check_output(path, overwrite=..., folder=...)   before any work: refuse what would be lost
    with replacing(path, overwrite=..., folder=...) as partial:
        write into `partial`                        a temporary folder or file beside `path`
                                                    on success it takes `path`'s place; on failure it is removed

    with one_writer(path):                          the whole command: a second writer of `path`
        ...                                         fails at once, naming this process

A folder is swapped in with two renames on the same filesystem (the old one is moved aside,
then deleted); a file with one atomic `os.replace`. A failed or interrupted write leaves
`path` as it was, plus at most a hidden `.NAME.*.partial[.EXT]` beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from typing import Iterator

from jaxlm.errors import UserError


def check_output(path: str, *, overwrite: bool, folder: bool) -> None:
    """Raises UserError (exit 2) if writing `path` would lose something without `overwrite`, or cannot work."""
    kind = "folder" if folder else "file"
    if os.path.isdir(path) and not folder:
        raise UserError(f"{path}: is a folder; the output is a file")
    if os.path.exists(path) and not os.path.isdir(path) and folder:
        raise UserError(f"{path}: is a file; the output is a folder")
    if overwrite:
        return
    if folder and os.path.isdir(path) and os.listdir(path):
        held = sorted(os.listdir(path))
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise UserError(f"{path}: the output folder is not empty (it holds {shown}); "
                        "pass --overwrite to replace it, or choose another folder")
    if not folder and os.path.exists(path):
        raise UserError(f"{path}: the output {kind} exists; pass --overwrite to replace it")


@contextlib.contextmanager
def replacing(path: str, *, overwrite: bool, folder: bool) -> Iterator[str]:
    """A temporary folder (or file path) beside `path` to write into; see the module docstring."""
    path = os.path.abspath(os.fspath(path))
    check_output(path, overwrite=overwrite, folder=folder)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    if folder:
        partial = tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=parent)
    else:
        # the extension stays last: writers choose the format by it (".gguf")
        suffix = ".partial" + os.path.splitext(name)[1]
        handle, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=parent)
        os.close(handle)
    try:
        yield partial
        if folder:
            _swap_folder(partial, path)
        else:
            os.replace(partial, path)
    except BaseException:
        _remove(partial)
        raise


def _swap_folder(new: str, path: str) -> None:
    if not os.path.isdir(path):
        os.rename(new, path)
        return
    parent, name = os.path.split(path)
    old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=parent)
    os.rename(path, os.path.join(old, name))
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(os.path.join(old, name), path)  # put the old one back
        raise
    finally:
        if os.path.isdir(path):
            shutil.rmtree(old, ignore_errors=True)


def _remove(partial: str) -> None:
    if os.path.isdir(partial):
        shutil.rmtree(partial, ignore_errors=True)
    elif os.path.exists(partial):
        os.remove(partial)


@contextlib.contextmanager
def one_writer(path: str) -> Iterator[None]:
    """Holds an exclusive lock on `path` (a folder or file a command writes) while the block runs.

    The lock is an advisory `flock` on a hidden `.NAME.lock` beside `path`, never inside it, so it is not
    taken for data there; it holds this process's id, which a second writer names when it raises UserError
    (exit 2) at once. The kernel releases it when the process ends, however it ends; the file is removed on
    the way out of the block (one that a killed process left behind is simply taken over).
    """
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    lock = os.path.join(parent, f".{name}.lock")
    while True:
        handle = open(lock, "a+", encoding="utf-8")  # "a+": never truncates the holder's pid before the lock is won
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise UserError(f"{path}: another process (pid {holder}) is writing it; wait for it to finish, or "
                            f"choose another output (the lock is {lock})") from None
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(lock)):
                break
        handle.close()  # the holder removed the file between our open and our lock: lock the one there now
    try:
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)  # while still locked: whoever opens it next opens a new file
        handle.close()
