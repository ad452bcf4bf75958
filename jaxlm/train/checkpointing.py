"""Orbax checkpoints: the train state plus a JSON "loop" item (data position, early-stopping state).

Saves are asynchronous (the device-to-host copy blocks, the file writes do not) and atomic:
Orbax writes to a temporary folder and renames it when complete, so a run killed at any
moment leaves only whole checkpoints. Kept: the latest `keep`, plus the best by eval loss.

A full disk surfaces at the next save or wait, from Orbax's writer threads, as a pile of
tracebacks; here it becomes one `DiskFull` (exit 3) naming the checkpoint that failed, whose
partial folder is removed, and the last good checkpoint stays (re-run to resume).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import math
import os
import re
import shutil
import sys
import traceback

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxlm.errors import DiskFull

_NO_SPACE = ("No space left on device", f"os_error_code='{errno.ENOSPC}'")
_PARTIAL = re.compile(r"/(\d+)\.orbax-checkpoint-tmp")


class Checkpointer:
    def __init__(self, directory: str, *, keep: int, async_save: bool = True):
        preserve = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=_eval_loss, reverse=True, n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        # best_fn is what makes Orbax write each checkpoint's metrics to disk and rank them in best_step();
        # without it the best checkpoint is forgotten on restart and deleted by the next save.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preserve, best_fn=_eval_loss, best_mode="min",
            enable_async_checkpointing=async_save, create=True,
        )
        self.directory = directory if "://" in directory else os.path.abspath(directory)  # gs://... as is
        _quiet_disk_full_in_writer_threads()
        self._saving: int | None = None  # the step of the save last started
        self._failed = False
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "loop"))

    def save(self, step: int, state, loop: dict, eval_loss: float | None = None) -> None:
        metrics = {"eval_loss": float(eval_loss)} if eval_loss is not None else {}  # None: Orbax warns
        with self._disk_full(step):
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)),
                metrics=metrics,
                force=True,
            )
        self._saving = step

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def restore(self, step: int, like_state, shardings):
        """(state, loop) at `step`, each array placed with the matching sharding of `shardings`."""
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like_state, shardings
        )
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), loop=ocp.args.JsonRestore())
        )
        return restored.state, restored.loop  # pyright: ignore[reportAttributeAccessIssue]  Composite's items

    def wait(self) -> None:
        """Until every asynchronous save is on disk."""
        with self._disk_full(self._saving):
            self.manager.wait_until_finished()

    def close(self) -> None:
        if self._failed:  # the failure was reported; only let Orbax's threads end
            with contextlib.suppress(Exception):
                self.manager.close()
            return
        self.wait()
        self.manager.close()

    @contextlib.contextmanager
    def _disk_full(self, step: int | None):
        """A full disk as one DiskFull naming the checkpoint; the partial folder is removed."""
        try:
            yield
        except Exception as e:
            if not _is_disk_full(e):
                raise
            self._failed = True
            named = _PARTIAL.search(_chain_text(e))  # the folder of the save that failed
            if named:
                step = int(named.group(1))
            elif self._saving is not None:  # the save still in flight, whose failure surfaced here
                step = self._saving
            for partial in glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
                shutil.rmtree(partial, ignore_errors=True)  # gives the space back
            whole = sorted(int(n) for n in os.listdir(self.directory) if n.isdigit()) \
                if os.path.isdir(self.directory) else []
            kept = f"the last good checkpoint (step {whole[-1]}) is kept" if whole else "no checkpoint was written"
            raise DiskFull(f"no space left on device while saving checkpoint {step} to {self.directory}; {kept}. "
                           "Free some space and re-run to resume") from None


def _chain(error: BaseException | None):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _chain_text(error: BaseException) -> str:
    return "\n".join(map(str, _chain(error)))


def _is_disk_full(error: BaseException) -> bool:
    return (any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in _chain(error))
            or any(marker in _chain_text(error) for marker in _NO_SPACE))


class _DiskFullFilter(logging.Filter):
    """Drops Orbax's writer-thread tracebacks about a full disk: the main thread reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += _chain_text(record.exc_info[1])
        return not any(marker in text for marker in _NO_SPACE)


_FILTER = _DiskFullFilter()


def _quiet_disk_full_in_writer_threads() -> None:
    """Orbax's threads log a failed write at length (and asyncio, when the failed write's gathered
    future is collected unread, logs it again); once a save fails, tensorstore's C++ threads may still
    hand results to the closed event loop of the failed write and print each refusal."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    if not getattr(sys.excepthook, "drops_closed_loop_callbacks", False):
        sys.excepthook = _dropping_closed_loop_callbacks(sys.excepthook)
    if not getattr(sys.unraisablehook, "drops_closed_loop_callbacks", False):  # the other way C++ reports them
        sys.unraisablehook = _dropping_closed_loop_unraisable(sys.unraisablehook)


def _late_callback(kind, value, tb) -> bool:
    """A result handed to the closed event loop of a failed write, called straight from C++, nothing else."""
    frames = traceback.extract_tb(tb)
    return (kind is RuntimeError and str(value) == "Event loop is closed" and len(frames) == 2
            and frames[0].name == "call_soon_threadsafe")


def _dropping_closed_loop_callbacks(hook):
    def excepthook(kind, value, tb):
        if not _late_callback(kind, value, tb):
            hook(kind, value, tb)

    excepthook.drops_closed_loop_callbacks = True
    return excepthook


def _dropping_closed_loop_unraisable(hook):
    def unraisablehook(unraisable):
        if not _late_callback(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback):
            hook(unraisable)

    unraisablehook.drops_closed_loop_callbacks = True
    return unraisablehook


def _eval_loss(metrics: dict) -> float:
    """The rank of a checkpoint (lower is better); one saved without an evaluation ranks last."""
    return metrics.get("eval_loss", math.inf)
