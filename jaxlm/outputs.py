"""Writing what a command produces: never over something that exists unless asked, never half-written.

    check_output(path, overwrite=..., folder=...)   before any work: refuse what would be lost
    with replacing(path, overwrite=..., folder=...) as partial:
        write into `partial`                        a temporary folder or file beside `path`
                                                    on success it takes `path`'s place; on failure it is removed

A folder is swapped in with two renames on the same filesystem (the old one is moved aside,
then deleted); a file with one atomic `os.replace`. A failed or interrupted write leaves
`path` as it was, plus at most a hidden `.NAME.*.partial[.EXT]` beside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

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
