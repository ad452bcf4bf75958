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
import math
import os
import shutil
import tempfile
from collections.abc import Iterator

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
