"""Orbax checkpoints: the train state plus a JSON "loop" item (data position, early-stopping state).

Saves are asynchronous (the device-to-host copy blocks, the file writes do not) and atomic:
Orbax writes to a temporary folder and renames it when complete, so a run killed at any
moment leaves only whole checkpoints. Kept: the latest `keep`, plus the best by eval loss.
"""

from __future__ import annotations

import math
import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


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
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "loop"))

    def save(self, step: int, state, loop: dict, eval_loss: float | None = None) -> None:
        metrics = {"eval_loss": float(eval_loss)} if eval_loss is not None else {}  # None: Orbax warns
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)),
            metrics=metrics,
            force=True,
        )

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
        return restored.state, restored.loop

    def wait(self) -> None:
        """Until every asynchronous save is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _eval_loss(metrics: dict) -> float:
    """The rank of a checkpoint (lower is better); one saved without an evaluation ranks last."""
    return metrics.get("eval_loss", math.inf)
