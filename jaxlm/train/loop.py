"""`train(config)`: load, (resume), step, evaluate, checkpoint, export. Tests call this directly.

Host syncs happen only at sync points (every `train.log_every` steps, at evaluations and
checkpoints); in between, steps are dispatched asynchronously and their metrics stay on device.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np
import yaml
from flax import nnx

from jaxlm.train import report
from jaxlm.train.checkpointing import Checkpointer
from jaxlm.train.config import Config, resolve_path, to_dict
from jaxlm.train.inputs import build_pipelines, first_batches, held_out_prompts, load_model, load_tokenizer, output_paths
from jaxlm.train.metrics import MetricsLogger, plot_loss_curve
from jaxlm.train.engine import build_engine
from jaxlm.train.state import count_params


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the message says what to do."""


@dataclasses.dataclass
class TrainResult:
    output_dir: str
    step: int
    stop_reason: str  # "completed" | "early_stopping" | "already_complete"
    eval_losses: list[tuple[int, float]]
    model: nnx.Module  # trained, LoRA not merged
    tokenizer: object
    compile_seconds: float


def train(cfg: Config, *, progress: bool = True, export: bool = True) -> TrainResult:
    paths = output_paths(cfg.output_dir)
    os.makedirs(cfg.output_dir, exist_ok=True)
    with open(paths["config"], "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    t = cfg.train

    # --- model and data ----------------------------------------------------------------
    started = time.perf_counter()
    if cfg.task == "token_classification":
        train_data, eval_data = build_pipelines(cfg, load_tokenizer(cfg))
        model, tokenizer = load_model(cfg, train_data.label_names)
    else:
        model, tokenizer = load_model(cfg)
        train_data, eval_data = build_pipelines(cfg, tokenizer)
    eval_batches = first_batches(eval_data, cfg.eval.steps)
    stats = train_data.stats()
    _say(progress, f"loaded {type(model).__name__} and data in {time.perf_counter() - started:.1f}s; "
                   f"records {stats['records']}, skipped {stats['skipped']}, eval batches {len(eval_batches)}")

    checkpointer = Checkpointer(paths["checkpoints"], keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    resume_step = checkpointer.latest_step()
    prompts = held_out_prompts(cfg.data, cfg.eval.sample_prompts) if cfg.task == "sft" else []
    before = None
    if prompts and resume_step is None:
        before = report.generate_answers(model, tokenizer, prompts, cfg.eval.sample_tokens)
        report.write_samples(paths["samples"], prompts, before, None)

    # --- state, shardings, compiled steps --------------------------------------------------
    engine = build_engine(model, cfg)
    trained = count_params(engine.state.params)
    _say(progress, f"trainable parameters: {trained:,} of {trained + count_params(engine.frozen):,}; "
                   f"mesh {dict(engine.mesh.shape)}")
    loop = {"best_eval_loss": None, "evals_since_best": 0}
    start = 0
    if resume_step is not None:
        engine.state, saved = checkpointer.restore(resume_step, engine.state, engine.state_sharding)
        train_data.set_state(saved["data"])
        loop, start = saved["loop"], resume_step
        print(f"resumed from {paths['checkpoints']} at step {start}", flush=True)

    def evaluate():
        if not eval_batches:
            return {}, None
        sums, counts, labels, preds = [], [], [], []
        for b in eval_batches:
            loss_sum, count, pred = engine.evaluate(b)
            sums.append(loss_sum), counts.append(count)
            if pred is not None:
                labels.append(b["labels"]), preds.append(pred)
        out = {"eval_loss": float(np.sum(jax.device_get(sums)) / max(np.sum(jax.device_get(counts)), 1.0))}
        ner_text = None
        if preds:
            tags = report.ner_tags(labels, jax.device_get(preds), eval_data.label_names)
            summary, ner_text = report.ner_report(*tags)
            out.update(summary)
        return out, ner_text

    logger = MetricsLogger(cfg.output_dir, t.steps, start_step=start, progress=progress)
    eval_losses = []
    if start == 0 and eval_batches:
        first, _ = evaluate()
        eval_losses.append((0, first["eval_loss"]))
        logger.log(0, first)
        logger.write(f"step 0: eval loss {first['eval_loss']:.4f}")

    # --- the loop --------------------------------------------------------------------------
    stop_reason = "already_complete" if start >= t.steps else "completed"
    batches = iter(train_data)
    compile_seconds = 0.0
    pending, last_sync, ner_text = [], time.perf_counter(), None
    for step in range(start, t.steps):
        batch = next(batches)
        if step == start:
            began = time.perf_counter()
            engine.compile(batch)
            compile_seconds = time.perf_counter() - began
            logger.write(f"compiled the train step in {compile_seconds:.1f}s")
            last_sync = time.perf_counter()
        metrics = engine.step(batch)
        done = step + 1
        pending.append((done, metrics))
        eval_now = eval_batches and (done == t.steps or (cfg.eval.every and done % cfg.eval.every == 0))
        save_now = done % cfg.checkpoint.every == 0 or done == t.steps
        if done % t.log_every and not eval_now and not save_now:
            continue

        # sync point: fetch the interval's metrics, check for a non-finite loss
        rows = [dict(jax.device_get(m), step=s) for s, m in pending]
        pending = []
        elapsed, last_sync = time.perf_counter() - last_sync, time.perf_counter()
        tokens_per_s = len(rows) * t.batch_size * t.seq_len / max(elapsed, 1e-9)
        data_stats = train_data.stats()
        for row in rows:
            row.update(tokens_per_s=tokens_per_s, skipped_records=data_stats["skipped"])
        rows[-1].update(realised_shares(data_stats))
        bad = int(engine.state.bad_step)
        if bad >= 0:
            for row in rows:
                logger.log(row.pop("step"), row)
            logger.close()
            checkpointer.close()
            last = checkpointer.latest_step()
            kept = f"the last good checkpoint (step {last}) is kept in {paths['checkpoints']}" if last is not None \
                else "no checkpoint had been written yet"
            raise TrainingError(f"step {bad + 1}: the loss or its gradients are not finite (NaN/inf); stopped, "
                                f"and {kept}. Lower train.learning_rate or train.max_grad_norm, or use "
                                f"train.compute_dtype=float32, then re-run to resume.")
        improved = False
        if eval_now:
            result, ner_text = evaluate()
            eval_losses.append((done, result["eval_loss"]))
            rows[-1].update(result)
            best = loop["best_eval_loss"]
            improved = best is None or result["eval_loss"] < best
            if improved:
                loop["best_eval_loss"], loop["evals_since_best"] = result["eval_loss"], 0
            else:
                loop["evals_since_best"] += 1
            logger.write(f"step {done}: eval loss {result['eval_loss']:.4f}"
                         + (f", entity F1 {result['eval_f1']:.3f}" if "eval_f1" in result else ""))
        for row in rows:
            logger.log(row.pop("step"), row)
        logger.advance(done)
        patience = cfg.eval.early_stopping_patience
        stop = eval_now and patience > 0 and loop["evals_since_best"] >= patience
        if save_now or improved or stop:
            eval_loss = rows[-1].get("eval_loss") if eval_now else None
            checkpointer.save(done, engine.state, {"data": train_data.get_state(), "loop": loop}, eval_loss)
        if stop:
            stop_reason = "early_stopping"
            logger.write(f"early stopping at step {done}: no eval improvement in {patience} evaluations")
            break
    logger.close()
    checkpointer.close()

    # --- outputs ---------------------------------------------------------------------------
    engine.update_model(model)
    final_step = int(engine.state.step)
    if ner_text:
        with open(paths["ner_report"], "w", encoding="utf-8") as f:
            f.write(ner_text)
    if prompts and stop_reason != "already_complete":
        after = report.generate_answers(model, tokenizer, prompts, cfg.eval.sample_tokens)
        if before is None and os.path.exists(paths["samples"]):
            import json

            with open(paths["samples"], encoding="utf-8") as f:
                before = [r["before"] for r in json.load(f)]
        report.write_samples(paths["samples"], prompts, before, after)
    if os.path.exists(paths["metrics"]):
        plot_loss_curve(paths["metrics"], paths["plot"])
    if export:
        report.export(model, tokenizer, paths, base_model=resolve_path(cfg.model.path), task=cfg.task,
                      gguf_type=cfg.export.gguf)
    return TrainResult(cfg.output_dir, final_step, stop_reason, eval_losses, model, tokenizer, compile_seconds)


def realised_shares(data_stats: dict) -> dict:
    """Flat `share/examples/<source>` and `share/tokens/<source>` metrics (what the mixture really gave)."""
    return {f"share/{kind}/{source}": value
            for kind, key in (("examples", "example_share"), ("tokens", "token_share"))
            for source, value in data_stats[key].items()}


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, flush=True)
