"""A synthesis run: plan batches, generate them on an engine, judge, keep, write, resume.

The driver (this module) owns every decision that depends on more than one candidate:
novelty and near-duplicate checks against what was kept, the ``--num`` limit, the order of
the output files. Workers only generate and apply the checks that need one candidate.
"""

from __future__ import annotations

import os
import time

from tqdm.auto import tqdm

from jaxlm.errors import UserError
from jaxlm.synth.config import SynthConfig, SynthError, validate
from jaxlm.synth.novelty import Pool
from jaxlm.synth.state import RunState


def run_synth(config: SynthConfig) -> dict:
    """Make ``config.num`` records (or as many as the source allows) in ``config.out``; returns the summary."""
    validate(config)
    if config.engine != "openai":  # a served model is checked by asking the server, once it is reached
        _check_model(config.model)
    from jaxlm.synth.engine import make_engine
    from jaxlm.synth.modes import MODE_CLASSES

    mode = MODE_CLASSES[config.mode](config)  # reads seeds / corpus / data: errors before the model loads
    if config.engine == "ray":
        from jaxlm.cluster import reach

        reach()  # a cluster that does not answer is an error before --out holds anything
    state = RunState.open(config)  # the run already in --out, checked; nothing is written yet
    pool, kept_instructions = _rebuild_pool(config, mode, state)
    engine = make_engine(config) if state.kept < config.num else None  # a model that cannot load: --out untouched
    try:
        state.start()
        if engine is not None:
            _generate(config, mode, state, engine, pool, kept_instructions)
        served = config.engine == "openai"  # `model` names what the server at base_url serves
        return state.summary(state.kept >= config.num, {
            "model": config.model if served else os.path.basename(os.path.normpath(_model_path(config.model))),
            "engine": config.engine, **({"base_url": config.base_url} if served else {}),
            "workers": config.workers if config.engine == "ray" else 1, "out": config.out})
    finally:
        state.close()
        if engine is not None:
            engine.close()


def _model_path(spec: str) -> str:
    from jaxlm.model_paths import resolve

    return resolve(spec)


def _check_model(spec: str) -> None:
    from jaxlm.assets import AssetMissing

    try:
        path = _model_path(spec)
    except AssetMissing as e:
        raise SynthError(f"--model {spec}: {e}") from None
    if not os.path.exists(path):
        raise SynthError(f"--model {spec}: no such model folder or .gguf file")
    if os.path.isdir(path):  # from its small files, before anything is written or loaded
        from jaxlm.hf.load import read_config, read_tokenizer
        from jaxlm.models import architecture_for

        try:
            arch = architecture_for(read_config(path), os.path.join(path, "config.json"))
        except UserError:
            raise
        except ValueError as e:  # an unknown model_type
            raise SynthError(f"--model {spec}: {e}") from None
        if not arch.family.causal_lm:
            raise SynthError(f"--model {spec}: a {arch.name} cannot generate text; synth needs a causal LM")
        if read_tokenizer(path) is None:
            raise SynthError(f"--model {spec}: no tokenizer files (tokenizer.json, tokenizer_config.json, ...) "
                             "beside the weights")


def _rebuild_pool(config: SynthConfig, mode, state: RunState) -> tuple[Pool, list[str]]:
    """The novelty and near-duplicate indexes over the seed tasks and every record kept so far."""
    pool = Pool(config.filters.novelty_rouge, config.filters.near_duplicate_jaccard)
    for instruction, text in mode.pool_seeds():
        pool.add(instruction, text)
    kept_instructions = []
    for record in state.kept_records() if mode.pool_checks else ():
        instruction, text = mode.compared(record)
        pool.add(instruction, text)
        kept_instructions.append(instruction)
    return pool, kept_instructions


def _generate(config: SynthConfig, mode, state: RunState, engine, pool: Pool, kept_instructions: list[str]):
    last_commit = time.perf_counter()
    while state.kept < config.num:
        batches = mode.plan(state, kept_instructions)
        if not batches:
            break
        bar = tqdm(total=sum(len(b.jobs) for b in batches), unit=" candidates", disable=not config.progress,
                   desc=f"{config.mode} round {state.round['number']}", mininterval=1.0)
        for candidates in engine.map(batches):
            kept, rejected, counts = _judge(config, mode, state, pool, candidates, kept_instructions)
            now = time.perf_counter()
            state.commit(kept, rejected, counts, now - last_commit)
            last_commit = now
            bar.update(counts["generated"])
            bar.set_postfix(kept=f"{state.kept}/{config.num}")
            if state.kept >= config.num:
                break
        bar.close()
        state.end_round()


def _judge(config: SynthConfig, mode, state: RunState, pool: Pool, candidates, kept_instructions):
    """Apply the checks against the pool, in order; the kept ones join the pool at once."""
    filters = config.filters
    kept, rejected = [], []
    counts = {"generated": 0, "since_kept": state.since_kept, "new_tokens": 0, "prompt_tokens": 0,
              "generation_seconds": 0.0}
    for candidate in candidates:
        provenance = candidate.provenance
        counts["new_tokens"] += provenance["generated_tokens"]
        counts["prompt_tokens"] += provenance["prompt_tokens"]
        counts["generation_seconds"] += provenance["generation_seconds"]
        if state.kept + len(kept) >= config.num:
            continue  # generated with the batch, but not needed: neither kept nor counted
        counts["generated"] += 1
        counts["since_kept"] += 1
        reason, admitted = candidate.rejected, None
        if reason is None and mode.pool_checks:
            reason, admitted = _against_pool(filters, mode, pool, candidate.record)
        if reason is None:
            provenance["attempts"] = counts["since_kept"]  # candidates it took to keep this one
            counts["since_kept"] = 0
            if admitted is not None:
                instruction, signature = admitted
                pool.novelty.add(instruction)
                pool.near.add(signature)
                kept_instructions.append(instruction)
            kept.append(candidate.record)
        else:
            provenance["rejected_by"] = reason
            rejected.append(candidate.record)
    return kept, rejected, counts


def _against_pool(filters, mode, pool: Pool, record: dict):
    """(the pool check that rejects `record`, or None; what joins the pool if it is kept)."""
    instruction, text = mode.compared(record)
    scores = record["provenance"]["scores"]
    similarity = pool.novelty.closest(instruction)
    scores["novelty_rouge_l"] = round(similarity, 4)
    if filters.on("novelty") and similarity >= filters.novelty_rouge:
        return "novelty", None
    signature = pool.near.signature(text)
    jaccard = pool.near.closest(signature)
    scores["near_duplicate_jaccard"] = round(jaccard, 4)
    if filters.on("near_duplicate") and jaccard >= filters.near_duplicate_jaccard:
        return "near_duplicate", None
    return None, (instruction, signature)
