"""End to end: `train(config)` on tiny checkpoints with the real data pipeline, and what it leaves behind."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import jaxlm.eval
from jaxlm.train import TrainingError, report, train
from jaxlm.train import run as run_module
from jaxlm.train.__main__ import main
from jaxlm.train.checkpointing import Checkpointer
from jaxlm.train.loop import close, prepare, start
from jaxlm.train.metrics import read_metrics
from train_helpers import (
    tiny_config,
    write_conll,
    write_parquet,
    write_sft_jsonl,
    write_text,
    write_tiny_bert,
    write_tiny_llama,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"llama": write_tiny_llama(root / "llama"), "bert": write_tiny_bert(root / "bert"),
            "sft": write_sft_jsonl(root / "chat.jsonl"), "text": write_text(root / "text"),
            "conll": write_conll(root / "ner.conll"), "root": root}


@pytest.fixture(scope="module")
def lora_sft_run(files, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    # Trained from the chats as Parquet (the test split stays JSONL): the same records through the same reader.
    with open(files["sft"]) as f:
        chats = write_parquet(tmp / "chat.parquet", [json.loads(line) for line in f])
    cfg = tiny_config(tmp, files["llama"], "sft", [chats], "model.lora.rank=4", "model.lora.alpha=8",
                      "train.steps=12", "eval.every=4", "checkpoint.every=4", "checkpoint.keep=1",
                      "eval.sample_prompts=2", "eval.sample_tokens=4", "train.learning_rate=0.02",
                      "export.gguf=f32", f"data.test=[{files['sft']}]", "eval.test_steps=3",
                      f"eval.score_cache={tmp / 'score_cache'}")
    return cfg, train(cfg, progress=False)


def test_lora_sft_lowers_the_held_out_loss(lora_sft_run):
    _, result = lora_sft_run
    losses = [loss for _, loss in result.eval_losses]
    assert [s for s, _ in result.eval_losses] == [0, 4, 8, 12]
    assert losses[-1] < losses[0] - 0.5, losses


def test_metrics_jsonl_has_one_line_per_step_with_loss_lr_and_throughput(lora_sft_run):
    cfg, _ = lora_sft_run
    rows = {r["step"]: r for r in read_metrics(os.path.join(cfg.output_dir, "metrics.jsonl"))}
    assert sorted(rows) == list(range(13))
    for step in range(1, 13):
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "skipped_records"} <= set(rows[step])
    assert "eval_loss" in rows[4] and "eval_loss" not in rows[5]
    assert rows[1]["lr"] == 0.0 and rows[3]["lr"] == pytest.approx(0.02)


def test_metrics_log_the_realised_share_of_each_source(lora_sft_run):
    cfg, _ = lora_sft_run
    rows = read_metrics(os.path.join(cfg.output_dir, "metrics.jsonl"))
    shares = [{k: v for k, v in r.items() if k.startswith("share/")} for r in rows]
    logged = [s for s in shares if s]
    assert logged, "no share/... metrics were logged"
    (source,) = cfg.data.train
    for kind in ("examples", "tokens"):
        assert logged[-1][f"share/{kind}/{source.path}"] == pytest.approx(1.0)  # a single source gets it all


def test_run_writes_tensorboard_plot_samples_and_hf_export(lora_sft_run):
    cfg, result = lora_sft_run
    out = cfg.output_dir
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(out, "tensorboard")))
    assert os.path.getsize(os.path.join(out, "loss_curve.png")) > 1000
    samples = json.loads(Path(os.path.join(out, "samples.json")).read_text())
    assert len(samples["prompts"]) == 2
    assert all(s["before"] is not None and s["after"] is not None for s in samples["prompts"] + samples["general"])
    # hf/ holds the merged model: transformers loads it and agrees with the trained jaxlm model.
    hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(out, "hf")).eval()
    ids = np.array([[5, 17, 33, 9, 60, 2]], np.int32)
    with torch.no_grad():
        expected = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(np.asarray(result.model(ids)), expected, atol=2e-4)
    assert os.path.exists(os.path.join(out, "adapter", "adapter_model.safetensors"))


def test_export_gguf_writes_the_merged_model_beside_hf(lora_sft_run):
    import jaxlm

    cfg, result = lora_sft_run
    gguf_model, _ = jaxlm.load_pretrained(os.path.join(cfg.output_dir, "model.gguf"))
    ids = np.array([[5, 17, 33, 9, 60, 2]], np.int32)
    np.testing.assert_allclose(np.asarray(gguf_model(ids)), np.asarray(result.model(ids)), atol=2e-4)


def test_samples_score_the_answers_and_the_general_prompts_before_and_after(lora_sft_run):
    cfg, result = lora_sft_run
    samples = json.loads(Path(os.path.join(cfg.output_dir, "samples.json")).read_text())
    assert samples["step"] == {"before": 0, "after": result.step}
    general = json.loads(Path(os.path.join(os.path.dirname(jaxlm.eval.__file__), "general_prompts.json")).read_text())
    assert [g["prompt"] for g in samples["general"]] == general
    for side in ("before", "after"):
        assert {"rouge_l", "bleu", "chrf", "exact_match"} <= set(samples["scores"][side]["answers"])
        assert {"repeat_4", "looping", "hit_token_limit", "distinct_1", "distinct_2"} <= set(
            samples["scores"][side]["general"])
    markdown = Path(os.path.join(cfg.output_dir, "samples.md")).read_text()
    assert "| general | looping answers (rep-4 >= 0.5) |" in markdown and general[0] in markdown
    test = json.loads(Path(os.path.join(cfg.output_dir, "test_metrics.json")).read_text())
    losses = {line["score"]: line for line in samples["losses"]}
    assert losses["data.test loss"] == {"score": "data.test loss", "before": test["before"]["loss"],
                                        "after": test["after"]["loss"]}
    assert losses["data.eval loss"]["after"] == result.eval_losses[-1][1]
    assert f"| held-out | data.test loss | {test['before']['loss']:.3f} | {test['after']['loss']:.3f} |" in markdown
    assert f"score {test['after']['tokens']:,} tokens: the first 3 batches of data.test (eval.test_steps=3)" in markdown


def test_the_test_split_is_scored_before_and_after_training(lora_sft_run):
    cfg, result = lora_sft_run
    scores = json.loads(Path(os.path.join(cfg.output_dir, "test_metrics.json")).read_text())
    assert scores["steps"] == {"before": 0, "after": result.step}
    before, after = scores["before"], scores["after"]
    assert after["loss"] < before["loss"] - 0.5 and after["token_accuracy"] > before["token_accuracy"]
    assert after["perplexity"] == pytest.approx(np.exp(after["loss"]), rel=1e-6)
    assert before["tokens"] == after["tokens"] > 0  # the same test batches both times
    assert {"rouge_l", "bleu", "chrf", "exact_match"} <= set(after["answers"]) and "general" in after


def test_a_second_run_from_the_same_base_takes_its_step_0_scores_from_the_cache(lora_sft_run, tmp_path,
                                                                                monkeypatch):
    cfg, _ = lora_sft_run
    first = json.loads(Path(os.path.join(cfg.output_dir, "test_metrics.json")).read_text())["before"]
    first_samples = json.loads(Path(os.path.join(cfg.output_dir, "samples.json")).read_text())
    again = dataclasses.replace(cfg, output_dir=str(tmp_path / "again"))

    def fail(*args, **kwargs):
        raise AssertionError("the step-0 scores were computed again")

    monkeypatch.setattr(report, "sample", fail)
    monkeypatch.setattr(run_module, "score", fail)  # data.test's scoring; the eval loss is scored by the loop's
    run = prepare(again, progress=False)
    try:
        start(run)
    finally:
        close(run)
    cached = json.loads(Path(again.output_dir, "test_metrics.json").read_text())["before"]
    assert cached == {k: v for k, v in first.items() if k not in ("answers", "general")}  # those come from samples
    samples = json.loads(Path(again.output_dir, "samples.json").read_text())
    assert [p["before"] for p in samples["prompts"]] == [p["before"] for p in first_samples["prompts"]]
    assert samples["scores"]["before"] == first_samples["scores"]["before"]


def test_checkpoints_keep_the_latest_and_the_best(lora_sft_run):
    cfg, _ = lora_sft_run
    ckpt = Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), keep=1)
    # eval loss falls every time here, so the best is also the latest: one checkpoint remains.
    assert ckpt.all_steps() == [12] and ckpt.best_step() == 12
    ckpt.close()


def test_rerunning_a_finished_run_resumes_at_its_end_instead_of_retraining(lora_sft_run):
    cfg, _ = lora_sft_run
    again = train(cfg, progress=False, export=False)
    assert again.stop_reason == "already_complete" and again.step == 12


def test_causal_lm_on_text_files_packs_documents_and_learns(files, tmp_path):
    cfg = tiny_config(tmp_path, files["llama"], "causal_lm", [files["text"]], "train.steps=10", "eval.every=5",
                      "train.grad_accum=2", "train.learning_rate=0.01")
    result = train(cfg, progress=False, export=False)
    losses = [loss for _, loss in result.eval_losses]
    assert losses[-1] < losses[0] - 0.3, losses


def test_ner_trains_a_bert_tagger_and_reports_entity_scores(files, tmp_path):
    cfg = tiny_config(tmp_path, files["bert"], "token_classification", [files["conll"]], "train.steps=16",
                      "eval.every=8", "train.learning_rate=0.005", "data.pack=false", f"data.test=[{files['conll']}]")
    result = train(cfg, progress=False)
    rows = read_metrics(os.path.join(cfg.output_dir, "metrics.jsonl"))
    final = [r for r in rows if "eval_f1" in r][-1]
    assert final["eval_f1"] > 0.5 and result.eval_losses[-1][1] < result.eval_losses[0][1]
    report = Path(os.path.join(cfg.output_dir, "ner_report.txt")).read_text()
    assert "person" in report and "loc" in report and "f1-score" in report
    test = json.loads(Path(os.path.join(cfg.output_dir, "test_metrics.json")).read_text())
    assert test["after"]["f1"] > test["before"]["f1"] and "B-person" in test["after"]["tag_report"]
    hf = transformers.AutoModelForTokenClassification.from_pretrained(os.path.join(cfg.output_dir, "hf"))
    assert sorted(hf.config.id2label.values()) == ["B-loc", "B-person", "O"]


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(files, tmp_path):
    cfg = tiny_config(tmp_path, files["llama"], "causal_lm", [files["text"]], "train.steps=12",
                      "checkpoint.every=2", "train.log_every=1", "eval.every=0",
                      "train.learning_rate=1e30", "train.max_grad_norm=0", "train.warmup_steps=3")
    with pytest.raises(TrainingError, match=r"not finite .* last good checkpoint \(step \d+\)") as error:
        train(cfg, progress=False, export=False)
    first_bad = int(str(error.value).split(":")[0].removeprefix("step "))
    rows = {r["step"]: r for r in read_metrics(os.path.join(cfg.output_dir, "metrics.jsonl"))}
    assert not np.isfinite(float(rows[first_bad]["loss"])) or not np.isfinite(float(rows[first_bad]["grad_norm"]))
    assert max(rows) == first_bad  # the steps dispatched after it are not logged: they did not count
    ckpt = Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), keep=2)
    assert ckpt.all_steps() and max(ckpt.all_steps()) < first_bad
    ckpt.close()


def test_a_malformed_line_ends_the_run_with_file_and_line_and_exit_code_2(files, tmp_path, capsys):
    bad = write_sft_jsonl(tmp_path / "bad.jsonl", n=8, bad_line=True)
    code = main(["--no-progress", f"model.path={files['llama']}", f"data.train=[{bad}]", "data.eval=[]",
                 f"output_dir={tmp_path / 'run'}", "train.steps=2", "train.batch_size=2"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"data error: {bad}:4:") and "\n" not in err and "Traceback" not in err


def test_skipped_lines_are_counted_in_the_metrics(files, tmp_path):
    bad = write_sft_jsonl(tmp_path / "bad.jsonl", n=24, bad_line=True)
    cfg = tiny_config(tmp_path, files["llama"], "sft", [bad], "data.on_error=skip", "train.steps=2",
                      "eval.every=0", "data.eval_fraction=0")
    train(cfg, progress=False, export=False)
    rows = read_metrics(os.path.join(cfg.output_dir, "metrics.jsonl"))
    assert rows[-1]["skipped_records"] == 1


def test_a_failure_in_the_after_training_report_is_a_warning_and_the_model_is_kept(files, tmp_path, monkeypatch,
                                                                                   capfd):
    import jaxlm.train.loop

    def broken(run):
        raise RuntimeError("the sampler broke")

    monkeypatch.setattr(jaxlm.train.loop, "sample_after", broken)
    out = tmp_path / "run"
    status = main(["--no-progress", f"model.path={files['llama']}", "task=sft", f"output_dir={out}",
                   f"data.train=[{files['sft']}]", "data.eval=[]", "train.steps=2", "train.batch_size=2",
                   "train.seq_len=32", "model.lora.rank=4", "eval.sample_prompts=1", "eval.sample_tokens=2"])
    err = capfd.readouterr().err
    assert status == 0, err[-3000:]
    assert ("warning: the after-training sample answers failed (RuntimeError: the sampler broke); the model and "
            f"checkpoints are kept, the traceback is in {out}/report_error.log") in err
    assert "Traceback" not in err and "the sampler broke" in (out / "report_error.log").read_text()
    assert (out / "hf" / "model.safetensors").exists() and (out / "adapter" / "adapter_config.json").exists()
    assert (out / "loss_curve.png").exists()  # the rest of the report is still written


def test_jaxlm_train_runs_a_qwen3_folder_with_stacked_layers_and_exports_it(files, tmp_path):
    """The first thing a Qwen user tries: `jaxlm train model.path=QWEN3_FOLDER` (it once stopped at model_type)."""
    from hf_checkpoints import tiny_qwen3
    from train_helpers import llama_tokenizer

    folder = tmp_path / "qwen3"
    tiny_qwen3(folder, tied=True)
    llama_tokenizer().save_pretrained(folder)
    out = tmp_path / "run"
    status = main(["--no-progress", f"model.path={folder}", "task=sft", f"output_dir={out}",
                   f"data.train=[{files['sft']}]", "data.eval_fraction=0.25", "train.steps=4", "train.batch_size=4",
                   "train.seq_len=32", "train.warmup_steps=0", "eval.every=2", "eval.steps=1",
                   "checkpoint.every=4", "model.lora.rank=4", "model.scan_layers=true", "model.remat=full"])
    assert status == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "hf")
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    # the default sample answers, generated through the stacked layers' KV cache before and after training
    samples = (out / "samples.md").read_text()
    assert "## Held-out questions" in samples and "- after: " in samples, samples
    assert not (out / "report_error.log").exists()
    steps = {r["step"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r}
    assert steps == {1, 2, 3, 4}, steps


def test_a_second_run_loads_its_programs_from_the_compile_cache(files, tmp_path):
    """train.compile_cache: the first run writes its compiled programs there; a second run of the same settings
    (another output folder, the in-memory caches cleared) finds every one of them and adds none. JAX keeps only
    programs that took a second to compile and the tiny model's take less, so the threshold is 0 here. Last in
    this file: it clears the process's in-memory compilation caches."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    cache = tmp_path / "xla"
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    try:
        entries = []
        for name in ("first", "second"):
            jax.clear_caches()
            train(tiny_config(tmp_path / name, files["llama"], "sft", [files["sft"]], "train.steps=2",
                              "eval.every=0", "eval.general_prompts=false", f"train.compile_cache={cache}"),
                  progress=False, export=False)
            entries.append(sorted(os.listdir(cache)))
        assert entries[0], "nothing was written to the compile cache"
        assert entries[1] == entries[0]
        losses = [[r["loss"] for r in read_metrics(str(tmp_path / name / "run" / "metrics.jsonl")) if "loss" in r]
                  for name in ("first", "second")]
        assert losses[0] and losses[1] == losses[0]  # the loaded programs compute what the compiled ones did
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)
        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()
