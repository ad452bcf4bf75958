"""A training run's fixed parts: what `prepare` builds, how a checkpoint resumes it, what it leaves.

`loop.py` tells the story and drives the steps; this module sets them up and winds them down.
The files a person reads are written here (`write_config`, `sample_before`, `export_model`, `write_report`) and by
`Run.logger`, by process 0 only (`Run.writer`, see compute/distributed.py); every process runs the steps,
evaluations and checkpoints.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import jax
import yaml
from flax import nnx

from jaxlm.compute import distributed
from jaxlm.compute.rewards import build_rewards
from jaxlm.errors import warn
from jaxlm.models.contract import is_causal_lm
from jaxlm.tasks import LABELLED_TASKS
from jaxlm.train import report, score_cache
from jaxlm.train.checkpointing import Checkpointer
from jaxlm.train.config import Config, ConfigError, resolve_path, to_dict
from jaxlm.train.engine import Engine, build_engine, precomputes_reference, trainable_filter
from jaxlm.train.export import write_exports
from jaxlm.train.inputs import (
    build_pipelines,
    check_positions,
    first_batches,
    held_out_prompts,
    load_model,
    load_teacher,
    load_tokenizer,
    output_paths,
    padded_to,
    training_pairs_once,
)
from jaxlm.train.metrics import MetricsLogger, plot_experts, plot_loss_curve, plot_mixing, plot_rewards, read_metrics
from jaxlm.train.overrides import flat
from jaxlm.train.reference import ReferenceTable
from jaxlm.train.rollout import Rollouts
from jaxlm.train.state import count_params

if TYPE_CHECKING:  # type hints only: the pipeline module loads TensorFlow, transformers is slow to import
    from transformers import PreTrainedTokenizerBase

    from jaxlm.data.pipeline import Pipeline

CHECKPOINT_ITEMS = ("data", "loop")  # the JSON beside the train state; hooks add theirs by name
MIXING_HOOK = "mixing"  # the bandit mixing policy's item (jaxlm.data.bandit.BanditMixing.name)


class SyncHook(Protocol):
    """Learns from training at each sync point, e.g. a data-mixing policy that reweights sources by loss."""

    name: str  # its key in each checkpoint's JSON, next to "data" and "loop"

    def on_sync(self, step: int, rows: list[dict], data) -> None:
        """`rows`: host metrics of each step since the last sync (keys added to rows[-1] are logged);
        `data`: the train pipeline."""

    def state(self) -> dict:
        """JSON-serialisable; saved with every checkpoint."""
        ...

    def restore(self, state: dict) -> None:
        """Called on resume with what `state()` returned when the checkpoint was saved."""


@dataclasses.dataclass
class Run:
    """What `prepare` builds; the loop reads it (only `engine.state` changes)."""

    cfg: Config
    paths: dict
    model: nnx.Module
    tokenizer: PreTrainedTokenizerBase | None
    train_data: Pipeline
    eval_data: Pipeline | None
    eval_batches: list[dict]  # the same batches at every evaluation
    test_data: Pipeline | None
    test_batches: list[dict]  # data.test: scored before training and after
    engine: Engine
    checkpointer: Checkpointer
    resume_step: int | None  # the latest checkpoint's step; None for a fresh start
    logger: MetricsLogger
    prompts: list[dict]  # SFT: held-out prompts answered before and after training
    before: dict | None  # their answers (and the general prompts') at step 0, scored (None when resumed)
    hooks: tuple[SyncHook, ...]
    writer: bool  # this process writes the files a person reads (process 0 of a multi-process run)
    rollouts: Rollouts | None = None  # task grpo: samples and scores each step's completions
    score_key: str | None = None  # the step-0 scores' entry in eval.score_cache (None: no cache, or resumed)


def prepare(cfg: Config, *, progress: bool, hooks: Sequence[SyncHook] = ()) -> Run:
    """Model, data, engine, checkpointer and logger for `cfg`; `resume` then restores the latest checkpoint."""
    taken = (set(CHECKPOINT_ITEMS) | {MIXING_HOOK}) & {h.name for h in hooks}
    if taken:
        raise ValueError(f"hook name {taken.pop()!r} is taken by the checkpoint's own items")
    writer = distributed.is_writer()
    progress = progress and writer
    cfg.check_environment(jax.device_count())  # callers that skip the command get the same checks
    if cfg.train.compile_cache:
        use_compile_cache(cfg.train.compile_cache)
    check_positions(cfg)
    rewards = build_rewards(cfg.grpo.rewards) if cfg.task == "grpo" else []  # a bad python reward stops here
    paths = output_paths(cfg.output_dir, cfg.checkpoint.dir)
    if cfg.task == "grpo":  # samples.md holds the completions of each evaluation; the general check goes beside
        paths["samples"] = os.path.join(cfg.output_dir, "general_samples.json")
    if writer:
        check_same_run(cfg, paths)
        write_config(cfg, paths)
    started = time.perf_counter()
    model, tokenizer, train_data, eval_data, test_data = load_inputs(cfg)
    eval_batches = first_batches(eval_data, cfg.eval.steps)
    # every process takes part in each evaluation step, so all evaluate as many batches (shards differ in size)
    eval_batches = padded_to(eval_batches, distributed.common_count(len(eval_batches)))
    test_batches = first_batches(test_data, cfg.eval.test_steps)
    test_batches = padded_to(test_batches, distributed.common_count(len(test_batches)))
    stats = train_data.stats()
    _say(progress, f"loaded {type(model).__name__} and data in {time.perf_counter() - started:.1f}s; "
                   f"records {stats['records']}, skipped {stats['skipped']}, eval batches {len(eval_batches)}"
                   + (f", test batches {len(test_batches)}" if test_batches else ""))

    checkpointer = Checkpointer(paths["checkpoints"], keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    resume_step = checkpointer.latest_step()
    prompts = held_out_prompts(cfg.data, cfg.eval.sample_prompts) if cfg.task == "sft" else []
    engine = build_engine(model, cfg, teacher=load_teacher(cfg, model, tokenizer))
    if precomputes_reference(cfg):  # before any checkpoint is restored: the engine holds the starting weights
        engine.references = reference_table(cfg, engine, tokenizer, eval_batches + test_batches, progress)
        _say(progress, f"reference log-probs of {len(engine.references):,} pairs computed (dpo.precompute_reference)")
    before = None
    score_key = score_cache.key_for(cfg, test_batches, prompts) if resume_step is None else None
    if resume_step is None and writer:
        before = sample_before(cfg, model, tokenizer, prompts, paths, engine, score_key)
    trained = count_params(engine.state.params)
    _say(progress, f"trainable parameters: {trained:,} of {trained + count_params(engine.frozen):,}; "
                   f"mesh {dict(engine.mesh.shape)}")
    logger = MetricsLogger(cfg.output_dir, cfg.train.steps, start_step=resume_step or 0, progress=progress,
                           enabled=writer)
    rollouts = Rollouts(cfg, model, tokenizer, engine, trainable_filter(cfg), rewards) if cfg.task == "grpo" else None
    return Run(cfg, paths, model, tokenizer, train_data, eval_data, eval_batches, test_data, test_batches, engine,
               checkpointer, resume_step, logger, prompts, before, (*mixing_hooks(cfg, train_data), *hooks), writer,
               rollouts, score_key)


def use_compile_cache(folder: str) -> None:
    """JAX's persistent compilation cache in `folder` for what this process compiles from now on (programs that
    took JAX's threshold, a second, to compile: a run's train, eval and sampling programs)."""
    from jax.experimental.compilation_cache import compilation_cache

    folder = os.path.expanduser(folder)
    os.makedirs(folder, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    compilation_cache.reset_cache()  # JAX decides once per process whether to use a cache: at its first compile


def reference_table(cfg: Config, engine: Engine, tokenizer, held_out: list[dict], progress: bool) -> ReferenceTable:
    """dpo.precompute_reference: the starting model's log-probs of every training pair (one pass, in order) and of
    the eval and test batches. Several processes pad their passes to one count, as evaluation does."""
    batches = itertools.chain(training_pairs_once(cfg, tokenizer), held_out)
    if jax.process_count() > 1:  # every process runs every jitted forward
        listed = list(batches)
        batches = padded_to(listed, distributed.common_count(len(listed)))
    return ReferenceTable.build(engine.completion_logps, batches, progress=progress)


def mixing_hooks(cfg: Config, train_data) -> tuple[SyncHook, ...]:
    """`data.mixing=bandit`: the policy that learns the mixture from the per-source training loss."""
    if cfg.data.mixing != "bandit":
        return ()
    from jaxlm.data.bandit import BanditMixing

    prior = [source.weight for source in cfg.data.train]  # where the weights start, as the pipeline's first batch
    return (BanditMixing(cfg.data.bandit, train_data.source_names, prior),)


# Keys a rerun into a run's output_dir may change: how far it goes (train.steps extends it), what it measures
# and logs (eval.*, data.eval, data.test), how often and where it saves, the optimizer's hyperparameters, and
# how the same computation runs on this machine (mesh, micro-batches, dtypes of the compute, kernels, a DPO
# reference held or precomputed). Any
# other key changes what the checkpoints hold or mean (the model and its dtype, adapters, prompt tuning,
# trained parameters, task and head, training data and its position, batch, seed, optimizer state layout).
RESUMABLE = ("output_dir", "train.steps", "train.log_every", "train.learning_rate", "train.schedule",
             "train.warmup_steps", "train.weight_decay", "train.compute_dtype", "train.loss_chunk_tokens",
             "train.grad_accum", "train.steps_per_call", "dpo.precompute_reference", "eval.", "data.eval",
             "data.test", "checkpoint.", "mesh.", "model.attention", "model.remat", "export.")


def check_same_run(cfg: Config, paths: dict) -> None:
    """A rerun that would resume an output_dir's checkpoints describes the same run. config.yaml is the only
    record of what they hold: a changed key is refused before anything is written (it was rewritten, then
    restoring failed with Orbax's traceback), naming each key that differs."""
    if not os.path.exists(paths["config"]) or not _holds_checkpoints(paths["checkpoints"]):
        return
    try:
        with open(paths["config"], encoding="utf-8") as f:
            saved = flat(yaml.safe_load(f) or {})
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{paths['config']}: cannot read the saved config of the run to resume ({e})") from None
    now = flat(yaml.safe_load(yaml.safe_dump(to_dict(cfg))))  # as YAML reads it back
    changed = [key for key in sorted(saved.keys() & now.keys())
               if saved[key] != now[key] and not any(key == r or r.endswith(".") and key.startswith(r)
                                                     for r in RESUMABLE)]
    if changed:
        shown = "; ".join(f"{key}={now[key]!r} (saved: {saved[key]!r})" for key in changed)
        raise ConfigError(f"{shown}: {cfg.output_dir} holds the checkpoints of a run made with the saved "
                          f"value(s) ({paths['config']}); rerun with them to resume, or choose another output_dir")


def _holds_checkpoints(folder: str) -> bool:
    from etils import epath  # Orbax's paths: a local folder or gs://...

    path = epath.Path(folder)
    return path.is_dir() and any(child.name.isdigit() for child in path.iterdir())


def write_config(cfg: Config, paths: dict) -> None:
    os.makedirs(cfg.output_dir, exist_ok=True)
    with open(paths["config"], "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


def load_inputs(cfg: Config):
    """(model, tokenizer, train pipeline, eval pipeline or None, test pipeline or None)."""
    if cfg.task in LABELLED_TASKS:  # the head's labels come from the data (or model.config_overrides.id2label)
        train_data, eval_data, test_data = build_pipelines(cfg, load_tokenizer(cfg))
        model, tokenizer = load_model(cfg, train_data.label_names)
    else:
        model, tokenizer = load_model(cfg)
        train_data, eval_data, test_data = build_pipelines(cfg, tokenizer)
    return model, tokenizer, train_data, eval_data, test_data


def sample_before(cfg: Config, model, tokenizer, prompts: list[dict], paths: dict, engine: Engine,
                  score_key: str | None = None) -> dict | None:
    """The untrained model's answers to the held-out and general prompts with their scores, written at
    once (a killed run keeps them). One process: the model samples with the engine's parameters, on its mesh,
    so the answers after training reuse the compiled programs; several: process 0 samples alone, on its copy.
    From eval.score_cache when an earlier run answered the same prompts with the same base model."""
    general = wants_general_check(cfg, model)
    if not prompts and not general:
        return None
    before = score_cache.load(cfg, score_key, "samples")
    if before is not None:
        report.write_samples(paths["samples"], prompts, before, None, step=None)
        return before
    own = nnx.state(model)
    if jax.process_count() == 1:
        engine.update_model(model)
    try:
        before = report.sample(model, tokenizer, prompts, cfg.eval.sample_tokens, general=general)
    finally:  # the engine's parameters are donated to the train step: the model must not hold them meanwhile
        nnx.update(model, own)
    score_cache.save(cfg, score_key, "samples", before)
    report.write_samples(paths["samples"], prompts, before, None, step=None)
    return before


def wants_general_check(cfg: Config, model) -> bool:
    return cfg.eval.general_prompts and cfg.task not in LABELLED_TASKS and is_causal_lm(model)


# --- checkpoints ---------------------------------------------------------------------------


def resume(run: Run) -> dict | None:
    """Restores train state, data position and hook states from the latest checkpoint; returns its "loop"
    item (None on a fresh start)."""
    if run.resume_step is None:
        return None
    engine = run.engine
    engine.state, saved = run.checkpointer.restore(run.resume_step, engine.state, engine.state_sharding)
    positions = saved["data"] if isinstance(saved["data"], list) else [saved["data"]]  # one per process
    if len(positions) != jax.process_count():
        raise ConfigError(f"{run.paths['checkpoints']}: its checkpoints were written by {len(positions)} "
                          f"processes, this run has {jax.process_count()} (each reads its own shard of the data); "
                          f"resume with {len(positions)}, or start in a new output_dir")
    run.train_data.set_state(positions[jax.process_index()])
    for hook in run.hooks:
        if hook.name in saved:
            hook.restore(saved[hook.name])
    if run.writer:
        print(f"resumed from {run.paths['checkpoints']} at step {run.resume_step}", flush=True)
    return saved["loop"]


def checkpoint_items(run: Run, loop: dict) -> dict:
    """The JSON saved beside the train state: what exact resume needs besides parameters and optimizer.

    New state that must survive a restart (a mixing policy's, say) belongs here, as a hook or an item."""
    items = {"data": distributed.allgather_json(run.train_data.get_state()), "loop": loop}  # every process's
    items.update({hook.name: hook.state() for hook in run.hooks})
    return items


# --- outputs -------------------------------------------------------------------------------


def sample_after(run: Run) -> dict | None:
    general = wants_general_check(run.cfg, run.model)
    if not run.prompts and not general:
        return None
    return report.sample(run.model, run.tokenizer, run.prompts, run.cfg.eval.sample_tokens, general=general)


def score(run: Run, split: str) -> dict:
    """The model's scores on the data.eval or data.test batches (`split`: "eval" or "test"; the scores of
    jaxlm.eval.scoring), as the engine holds it now. Every process takes part."""
    from jaxlm.eval.scoring import score_batches

    batches, data = getattr(run, f"{split}_batches"), getattr(run, f"{split}_data")
    scores, _ = score_batches(run.engine.evaluate, batches, run.cfg.task, getattr(data, "label_names", None))
    return {**scores, "batches": len(batches)}  # with eval.test_steps, fewer than the split holds


def score_test_before(run: Run) -> dict:
    """The data.test scores at step 0: from eval.score_cache when an earlier run scored the same batches with
    the same base model, else scored now (and kept there)."""
    scores = score_cache.load(run.cfg, run.score_key, "test")
    if scores is None:
        scores = score(run, "test")
        score_cache.save(run.cfg, run.score_key, "test", scores)
    return scores


def write_test_before(run: Run, scores: dict) -> None:
    _write_test_metrics(run.paths, {"before": scores, "steps": {"before": 0}})


def export_model(run: Run) -> None:
    """hf/ (and adapter/, model.gguf): the trained model, written before anything optional."""
    write_exports(run.model, run.tokenizer, run.paths, base_model=resolve_path(run.cfg.model.path),
                  trainable=trainable_filter(run.cfg), gguf_type=run.cfg.export.gguf)


def after_training(run: Run, what: str, work: Callable, *args, **kwargs):
    """`work(*args, **kwargs)`, or None and a warning if it fails: the trained model is already exported, and
    a failure in the report must not end the run without it. The traceback goes to report_error.log."""
    try:
        return work(*args, **kwargs)
    except Exception as error:  # whatever went wrong here, the run's model and checkpoints are kept
        log = run.paths["report_error"]
        if run.writer:
            with open(log, "a", encoding="utf-8") as f:
                traceback.print_exc(file=f)
        warn(f"the after-training {what} failed ({type(error).__name__}: {error}); the model and checkpoints "
             f"are kept, the traceback is in {log}")
        return None


def write_report(run: Run, ner_text: str | None, after: dict | None, test_after: dict | None, *, step: int,
                 eval_losses: Sequence[tuple[int, float]] = ()) -> None:
    """The files a person reads after a run: NER report, sample answers, test scores, loss curve."""
    paths = run.paths
    if ner_text:  # the last evaluation's seqeval (NER) or per-class (classification) report
        report_path = paths["classification_report" if run.cfg.task == "classification" else "ner_report"]
        with open(report_path, "w", encoding="utf-8") as f:
            f.write(ner_text)
    before = run.before if run.before is not None else report.read_samples(paths["samples"])
    test = write_test_after(paths, test_after, before, after, step) if test_after is not None else None
    if after is not None:
        report.write_samples(paths["samples"], run.prompts, before, after, step=step,
                             losses=held_out_losses(test, eval_losses), test_scope=test_scope(run.cfg, test))
    if os.path.exists(paths["metrics"]):
        rows = read_metrics(paths["metrics"])
        plot_loss_curve(rows, paths["plot"])
        plot_mixing(rows, paths["mixing"])
        plot_rewards(rows, paths["rewards"])
        plot_experts(rows, paths["experts"])


def test_scope(cfg: Config, test: dict | None) -> str:
    """What the data.test lines of samples.md were scored on: the whole split, or its first eval.test_steps
    batches (a shorter report says so)."""
    after = (test or {}).get("after") or {}
    if "tokens" not in after or "batches" not in after:
        return ""
    part = (f"the first {after['batches']} batches of data.test (eval.test_steps={cfg.eval.test_steps})"
            if cfg.eval.test_steps else f"all of data.test ({after['batches']} batches)")
    return f"The data.test lines score {after['tokens']:,} tokens: {part}, the same ones before and after."


def held_out_losses(test: dict | None, eval_losses: Sequence[tuple[int, float]]) -> list[tuple[str, float, float]]:
    """(what, at step 0, at the end) for samples.md: the data.test token scores, and the eval loss when it was
    measured at step 0 (checkpoints keep it for a resumed run)."""
    lines = []
    if test and test.get("before") and test.get("after"):
        lines += [(f"data.test {key}", test["before"][key], test["after"][key])
                  for key in ("loss", "perplexity", "token_accuracy", "accuracy", "macro_f1", "f1")
                  if key in test["before"] and key in test["after"]]
    if eval_losses and eval_losses[0][0] == 0:
        lines.append(("data.eval loss", eval_losses[0][1], eval_losses[-1][1]))
    return lines


def write_test_after(paths: dict, scores: dict, before: dict | None, after: dict | None, step: int) -> dict:
    """test_metrics.json: the data.test scores at step 0 (as written when training began) and now, each with
    the scores of the answers of samples.json (held-out answers come from data.test when it is given)."""
    saved = {}
    if os.path.exists(paths["test_metrics"]):
        with open(paths["test_metrics"], encoding="utf-8") as f:
            saved = json.load(f)
    result = {"steps": {"before": 0, "after": step}, "before": saved.get("before"), "after": scores}
    for side, sampled in (("before", before), ("after", after)):
        if result[side] is not None and sampled:
            result[side] = {**result[side], **sampled["scores"]}
    if "confusion_matrix" in scores:
        from jaxlm.eval.metrics import plot_confusion_matrix

        plot_confusion_matrix(scores["confusion_matrix"], scores["matrix_labels"], paths["test_confusion"],
                              title=f"data.test after {step} steps")
    _write_test_metrics(paths, result)
    return result


def _write_test_metrics(paths: dict, result: dict) -> None:
    with open(paths["test_metrics"], "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, flush=True)
