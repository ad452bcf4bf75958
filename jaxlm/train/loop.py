"""`train(config)`: fine-tune a model as the config says. Tests call it directly.

A run, one named function per part:

    run = prepare(cfg)              model, tokenizer, data pipelines, engine (sharded state and compiled
                                    steps), checkpointer, logger (run.py)
    state = start(run)              the latest checkpoint restored (run.py: `resume`), or step 0 with a first
                                    eval and the data.test scores before training
    run_steps(run, state)           dispatches steps asynchronously, train.steps_per_call of them a compiled
                                    call (Engine.steps; several on a CPU); their metrics stay on device until
        at_sync_point(...)          every `train.log_every` steps, and at evaluations and checkpoints:
            sync                    the interval's metrics as host rows; stops on a non-finite loss
            record_eval             eval loss (and entity scores) on the same eval batches each time
            hook.on_sync            learn from the rows (`SyncHook`, run.py)
            log, save, stop         metrics rows, a checkpoint when due or best, early stopping
    finish(run, state)              HF export first, then the report: NER report, sample answers and test
                                    scores (before/after), loss curve -> TrainResult. A failure in the report
                                    is a warning (traceback in report_error.log), not the loss of the model

`Run` (run.py) is what `prepare` built; `LoopState` is all that changes as the loop runs, and
`LoopState.saved()` is the part a checkpoint keeps. A checkpoint is the train state plus the JSON that
`checkpoint_items` assembles: {"data": pipeline position, "loop": LoopState.saved(), one item per hook}.
The host waits for the device only at sync points.

Several processes (`--distributed`, see compute/distributed.py): every process runs every step, evaluation and
checkpoint save; the files a person reads are written only by process 0 (`Run.writer`): `Run.logger`
(metrics.jsonl, TensorBoard, the progress bar) and run.py's `write_config`, `sample_before`, `export_model`,
`write_report`.

Seams for what comes next:
- learning from the loss (a mixing policy that reweights sources, say): a `SyncHook` passed to `train`
  (or built in `prepare`) sees each sync point's rows and the train pipeline before they are logged and
  saved; its state is saved with every checkpoint and restored on resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
from flax import nnx

from jaxlm.compute import distributed
from jaxlm.errors import Stopped, interrupts_between, raise_if_interrupted
from jaxlm.eval.scoring import headline
from jaxlm.tasks import sequences_per_example
from jaxlm.train import report
from jaxlm.train.config import Config
from jaxlm.train.metrics import MetricsLogger, by_source, expert_load, realised_shares
from jaxlm.train.run import (
    Run,
    SyncHook,
    after_training,
    checkpoint_items,
    export_model,
    prepare,
    resume,
    sample_after,
    score,
    score_test_before,
    write_report,
    write_test_before,
)

if TYPE_CHECKING:  # a type hint only: transformers is slow to import
    from transformers import PreTrainedTokenizerBase


class TrainingError(Stopped):
    """The run cannot go on (e.g. a non-finite loss); the message says what to do. Exit status 3."""

    label = "training stopped"


@dataclasses.dataclass
class TrainResult:
    output_dir: str
    step: int
    stop_reason: str  # "completed" | "early_stopping" | "already_complete"
    eval_losses: list[tuple[int, float]]
    model: nnx.Module  # trained, LoRA not merged
    tokenizer: PreTrainedTokenizerBase | None
    compile_seconds: float


@dataclasses.dataclass
class LoopState:
    """Everything the loop changes as it runs."""

    step: int = 0  # optimizer steps done
    best_eval_loss: float | None = None
    evals_since_best: int = 0
    eval_losses: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # this process's evaluations
    # (step, metrics on device, index): index i picks the step's row out of a call of several steps, None for one
    pending: list[tuple[int, dict, int | None]] = dataclasses.field(default_factory=list)
    last_sync: float = 0.0  # perf_counter() at the last sync point, for throughput
    ner_text: str | None = None  # the last evaluation's entity report
    compile_seconds: float = 0.0
    stop_reason: str = "completed"

    def saved(self) -> dict:
        """What a checkpoint keeps (the early-stopping state, and the step-0 eval loss that the report sets
        beside the last one); the rest restarts with the process."""
        first = self.eval_losses[0] if self.eval_losses and self.eval_losses[0][0] == 0 else None
        return {"best_eval_loss": self.best_eval_loss, "evals_since_best": self.evals_since_best,
                "first_eval_loss": first[1] if first else None}


def train(cfg: Config, *, progress: bool = True, export: bool = True, hooks: Sequence[SyncHook] = ()) -> TrainResult:
    """Trains as `cfg` says, resuming from the latest checkpoint in `cfg.output_dir`; `hooks` see each sync point."""
    run = prepare(cfg, progress=progress, hooks=hooks)
    try:
        state = start(run)
        with interrupts_between("stopping after the step under way; re-run to resume from the last checkpoint"):
            run_steps(run, state)
    except BaseException:
        close(run, failing=True)
        raise
    close(run)
    return finish(run, state, export=export)


def close(run: Run, *, failing: bool = False) -> None:
    """The checkpointer first: when its last save filled the disk, that save is what the user reads about,
    not the TensorBoard flush that the same full disk refuses next (nor, in a run already failing, a flush's
    error in place of the run's own)."""
    try:
        run.checkpointer.close()
    except BaseException:
        failing = True
        raise
    finally:
        if failing:
            with contextlib.suppress(OSError):
                run.logger.close()
        else:
            run.logger.close()


def start(run: Run) -> LoopState:
    """The loop state at the latest checkpoint (restored into `run`), or at step 0 after a first evaluation."""
    saved = resume(run)
    if saved is not None:
        first = saved.get("first_eval_loss")  # absent from checkpoints written before it was kept
        return LoopState(step=run.resume_step,  # pyright: ignore[reportArgumentType]  a checkpoint has a step
                         best_eval_loss=saved["best_eval_loss"], evals_since_best=saved["evals_since_best"],
                         eval_losses=[] if first is None else [(0, first)])
    state = LoopState()
    if run.eval_batches:
        record_eval(run, state)
    if run.test_batches:
        scores = score_test_before(run)  # every process takes part; process 0 writes
        if run.writer:
            write_test_before(run, scores)
    return state


# --- the loop ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Due:
    """What the step just taken calls for."""

    eval: bool
    save: bool
    log: bool

    @property
    def sync(self) -> bool:
        return self.eval or self.save or self.log


def due_after(cfg: Config, step: int, can_eval: bool) -> Due:
    """grpo logs every step: its rollout waits for the host each step anyway, and a step can take minutes on a
    CPU, so a run killed before its first train.log_every steps kept no metrics at all."""
    last = step == cfg.train.steps
    return Due(eval=can_eval and (last or bool(cfg.eval.every and step % cfg.eval.every == 0)),
               save=last or step % cfg.checkpoint.every == 0,
               log=step % cfg.train.log_every == 0 or cfg.task == "grpo")


def run_steps(run: Run, state: LoopState) -> None:
    """Steps until `train.steps` or early stopping; the host waits for the device only at sync points."""
    if state.step >= run.cfg.train.steps:
        state.stop_reason = "already_complete"
        return
    first = state.step
    updates = run.cfg.grpo.iterations if run.rollouts is not None else 1  # optimizer steps per batch
    per_call = run.engine.steps_per_call
    batches = itertools.islice(run.train_data, -(-(run.cfg.train.steps - first) // updates))
    for batch in batches:
        group = [batch]
        if per_call > 1 and state.step % per_call == 0:  # not so only after a resume with other intervals
            group += itertools.islice(batches, per_call - 1)
        if per_call > 1 and len(group) == per_call:
            if state.step == first:
                compile_step(run, state, group)
            metrics = run.engine.steps(group)
            state.pending.extend((state.step + 1 + i, metrics, i) for i in range(per_call))
            state.step += per_call  # no sync point falls inside a call (Config.sync_intervals)
            if after_step(run, state):
                return
            continue
        for one in group:  # one step a call (with fewer batches left than a call takes, those)
            extra = {}
            if run.rollouts is not None:  # grpo: the batch's prompts answered, scored, and kept for `updates` steps
                one, extra = run.rollouts.batch(one, state.step)
            if state.step == first:
                compile_step(run, state, one)
            for _ in range(updates):
                state.pending.append((state.step + 1, {**run.engine.step(one), **extra}, None))
                extra = {}
                state.step += 1
                if after_step(run, state):
                    return


def after_step(run: Run, state: LoopState) -> bool:
    """The sync point's bookkeeping where `state.step` is one; True when the run stops early."""
    raise_if_interrupted()
    due = due_after(run.cfg, state.step, can_eval=bool(run.eval_batches))
    return due.sync and at_sync_point(run, state, due)


def compile_step(run: Run, state: LoopState, batch: dict | list[dict]) -> None:
    began = time.perf_counter()
    run.engine.compile(batch)
    state.compile_seconds = time.perf_counter() - began
    per_call = f" ({len(batch)} optimizer steps a call: train.steps_per_call)" if isinstance(batch, list) else ""
    run.logger.write(f"compiled the train step{per_call} in {state.compile_seconds:.1f}s")
    state.last_sync = time.perf_counter()


def at_sync_point(run: Run, state: LoopState, due: Due) -> bool:
    """One sync point's bookkeeping; True when the run stops early."""
    rows = sync(run, state)
    improved = stop = False
    eval_loss = None
    if due.eval:
        eval_loss = record_eval(run, state, rows).get("eval_loss")  # grpo: rewards, no loss
    if eval_loss is not None:
        improved = note_eval_loss(state, eval_loss)
        stop = patience_spent(run.cfg, state)
    for hook in run.hooks:
        hook.on_sync(state.step, rows, run.train_data)
    log_rows(run.logger, rows)
    run.logger.advance(state.step)
    if due.save or improved or stop:
        run.checkpointer.save(state.step, run.engine.state, checkpoint_items(run, state.saved()), eval_loss)
    if stop:
        state.stop_reason = "early_stopping"
        run.logger.write(f"early stopping at step {state.step}: no eval improvement in "
                         f"{run.cfg.eval.early_stopping_patience} evaluations")
    return stop


def sync(run: Run, state: LoopState) -> list[dict]:
    """The metrics of the steps since the last sync as host rows, with throughput and data statistics."""
    names = run.train_data.source_names
    fetched = {}  # a call's metrics once, however many steps it ran
    for _, m, _ in state.pending:
        if id(m) not in fetched:
            fetched[id(m)] = jax.device_get(m)
    rows = [expert_load(by_source(dict(_row(fetched[id(m)], i), step=s), names)) for s, m, i in state.pending]
    state.pending = []
    now = time.perf_counter()
    t = run.cfg.train
    tokens = t.batch_size * sequences_per_example(run.cfg.task) * t.seq_len
    if run.rollouts is not None:
        tokens *= run.cfg.grpo.group_size
    tokens_per_s = len(rows) * tokens / max(now - state.last_sync, 1e-9)
    state.last_sync = now
    data_stats = run.train_data.stats()
    for row in rows:
        row.update(tokens_per_s=tokens_per_s, skipped_records=data_stats["skipped"])
    rows[-1].update(realised_shares(data_stats))
    stop_if_not_finite(run, rows)
    return rows


def _row(metrics: dict, index: int | None) -> dict:
    return metrics if index is None else {k: v[index] for k, v in metrics.items()}


def stop_if_not_finite(run: Run, rows: list[dict]) -> None:
    bad = int(run.engine.state.bad_step)
    if bad < 0:
        return
    log_rows(run.logger, [row for row in rows if row["step"] <= bad + 1])  # the steps after it did not happen
    run.checkpointer.wait()
    last = run.checkpointer.latest_step()
    kept = f"the last good checkpoint (step {last}) is kept in {run.paths['checkpoints']}" if last is not None \
        else "no checkpoint had been written yet"
    raise TrainingError(f"step {bad + 1}: the loss or its gradients are not finite (NaN/inf); stopped, "
                        f"and {kept}. Lower train.learning_rate or train.max_grad_norm, or use "
                        f"train.compute_dtype=float32, then re-run to resume.")


def log_rows(logger: MetricsLogger, rows: list[dict]) -> None:
    for row in rows:
        logger.log(row["step"], {k: v for k, v in row.items() if k != "step"})


def note_eval_loss(state: LoopState, loss: float) -> bool:
    """Tracks the best eval loss for early stopping and the best checkpoint; True if `loss` is a new best."""
    improved = state.best_eval_loss is None or loss < state.best_eval_loss
    if improved:
        state.best_eval_loss, state.evals_since_best = loss, 0
    else:
        state.evals_since_best += 1
    return improved


def patience_spent(cfg: Config, state: LoopState) -> bool:
    patience = cfg.eval.early_stopping_patience
    return patience > 0 and state.evals_since_best >= patience


# --- evaluation ----------------------------------------------------------------------------


def record_eval(run: Run, state: LoopState, rows: list[dict] | None = None) -> dict:
    """Evaluates at `state.step`: adds the result to rows[-1] (or logs it alone) and to `state.eval_losses`."""
    if run.rollouts is not None:
        return record_rollout_eval(run, state, rows)
    scores = score(run, "eval")
    result = headline(scores, "eval_")  # "eval_loss" and the task's other scalar scores
    state.ner_text = scores.get("entity_report") or scores.get("report_text")  # seqeval or per-class report
    state.eval_losses.append((state.step, result["eval_loss"]))
    if rows is not None:
        rows[-1].update(result)
    else:
        run.logger.log(state.step, result)
    run.logger.write(f"step {state.step}: eval loss {result['eval_loss']:.4f}"
                     + (f", entity F1 {result['eval_f1']:.3f}" if "eval_f1" in result else "")
                     + (f", accuracy {result['eval_accuracy']:.3f}, macro-F1 {result['eval_macro_f1']:.3f}"
                        if "eval_accuracy" in result else ""))
    return result


def record_rollout_eval(run: Run, state: LoopState, rows: list[dict] | None) -> dict:
    """GRPO: the held-out prompts answered as in training and scored by the rewards (eval_reward_mean, ...);
    the first eval.sample_prompts of them with their completions and rewards appended to samples.md."""
    assert run.rollouts is not None
    result, sampled = run.rollouts.evaluate(run.eval_batches)
    if rows is not None:
        rows[-1].update(result)
    else:
        run.logger.log(state.step, result)
    if run.writer:
        report.append_rollout_samples(run.paths["rollout_samples"], state.step, result, sampled,
                                      run.cfg.eval.sample_prompts)
    run.logger.write(f"step {state.step}: held-out reward {result['eval_reward_mean']:.4f}")
    return result


# --- finish --------------------------------------------------------------------------------


def finish(run: Run, state: LoopState, *, export: bool) -> TrainResult:
    run.engine.update_model(run.model)
    if jax.process_count() > 1:  # a whole copy on every host, so that process 0 generates and exports alone
        nnx.update(run.model, distributed.host_copy(nnx.state(run.model)))
    done = state.stop_reason != "already_complete"
    if run.writer and export:
        export_model(run)  # first: nothing optional that follows can cost the trained model
    test_after = None
    if done and run.test_batches:  # every process takes part
        test_after = after_training(run, "data.test scores", score, run, "test")
    if run.writer:
        after = after_training(run, "sample answers", sample_after, run) if done else None
        after_training(run, "report", write_report, run, state.ner_text, after, test_after, step=state.step,
                       eval_losses=state.eval_losses)
    distributed.barrier("outputs")  # the other processes end when process 0 has written
    return TrainResult(run.cfg.output_dir, int(run.engine.state.step), state.stop_reason, state.eval_losses,
                       run.model, run.tokenizer, state.compile_seconds)
