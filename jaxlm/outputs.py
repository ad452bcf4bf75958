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
import math
import os
import shutil
import tempfile
from collections.abc import Iterator

from jaxlm.errors import UserError


def check_output(path: str, *, overwrite: bool, folder: bool) -> None:
    """Raises UserError (exit 2) if writing `path` would lose something without `overwrite`, or cannot work."""
    if not os.fspath(path).strip():  # "" is the current folder to abspath: --overwrite would swap it out
        raise UserError("the output path is empty")
    here = os.getcwd()
    if overwrite and os.path.commonpath([here, os.path.abspath(path)]) == os.path.abspath(path):
        raise UserError(f"{path}: is the folder this command runs in (or holds it); --overwrite would replace it")
    if os.path.isdir(path) and not folder:
        raise UserError(f"{path}: is a folder; the output is a file")
    if os.path.exists(path) and not os.path.isdir(path) and folder:
        raise UserError(f"{path}: is a file; the output is a folder")
    if not overwrite:
        _check_not_occupied(path, folder)
    _check_writable(path)


def _check_not_occupied(path: str, folder: bool) -> None:
    kind = "folder" if folder else "file"
    if folder and os.path.isdir(path) and os.listdir(path):
        held = sorted(os.listdir(path))
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise UserError(f"{path}: the output folder is not empty (it holds {shown}); "
                        "pass --overwrite to replace it, or choose another folder")
    if not folder and os.path.exists(path):
        raise UserError(f"{path}: the output {kind} exists; pass --overwrite to replace it")


def _check_writable(path: str) -> None:
    """The output is written beside `path`: its parent must take new files (found before any work)."""
    reason = unwritable(os.path.dirname(os.path.abspath(path)))
    if reason:
        raise UserError(f"{path}: {reason}")


def unwritable(folder: str) -> str | None:
    """Why `folder` cannot be created or written to (checked on the nearest part of it that exists), or None."""
    existing = os.path.abspath(os.path.expanduser(folder))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):  # also EROFS: a read-only mount
        return f"{existing} is not writable (read-only or no permission)"
    return None


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
    plain_mode(partial)  # mkdtemp/mkstemp make private 0700/0600 entries
    try:
        yield partial
        if folder:
            _swap_folder(partial, path)
        else:
            os.replace(partial, path)
    except BaseException as error:
        _remove(partial)
        raise _naming(error, partial, path) from error.__cause__


def _naming(error: BaseException, partial: str, path: str) -> BaseException:
    """`error` with `path` where it names the hidden partial output: the user knows only `path`."""
    if isinstance(error, UserError) and partial in str(error):
        renamed = UserError(str(error).replace(partial, path))
        renamed.label = error.label
        return renamed
    if isinstance(error, OSError) and isinstance(error.filename, str):
        error.filename = error.filename.replace(partial, path)
    return error


def plain_mode(path: str) -> None:
    """Give `path` the mode open() or mkdir would have (0644/0755 under umask 022), not a private one."""
    mask = os.umask(0o22)  # the only way to read the umask is to set it
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


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
    _check_writable(path)  # the lock file is the first thing written: say why it cannot be, as the others do
    os.makedirs(parent, exist_ok=True)
    lock = os.path.join(parent, f".{name}.lock")
    while True:
        # "a+": never truncates the holder's pid before the lock is won; held until the block ends
        handle = open(lock, "a+", encoding="utf-8")  # noqa: SIM115
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


def plain(value):
    """`value` as JSON writes it: a NumPy or JAX scalar as a Python number, a non-finite float as its
    name ("nan", "inf": JSON has no literal for them); also `json.dump(..., default=plain)`."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is not None and not isinstance(value, (str, int, float, list, tuple, dict)):
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return value
