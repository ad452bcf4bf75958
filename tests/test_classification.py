"""Text classification: BERT's sequence-classification head against transformers, its data, and a tiny run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from sklearn.metrics import accuracy_score, f1_score

import jaxlm
from hf_checkpoints import padded_batch, tiny_bert, torch_logits
from jaxlm.compute import losses
from jaxlm.data import DataError, build_pipeline
from jaxlm.hf.peft import save_peft_adapter
from jaxlm.models.lora import apply_lora
from jaxlm.train import train
from jaxlm.train.config import ConfigError, load_config
from jaxlm.train.inputs import build_pipelines, first_batches
from jaxlm.train.metrics import read_metrics
from train_helpers import WORDS, bert_tokenizer, tiny_config, write_tiny_bert

TOPICS = {"cat": "pets", "rain": "weather", "park": "places"}


def write_topics(path, n: int = 60) -> str:
    """Short texts whose label is the topic of the one key word they contain: learnable in a few steps."""
    rng = np.random.RandomState(0)
    filler = [w for w in WORDS if w not in TOPICS]
    with open(path, "w") as f:
        for i in range(n):
            key = list(TOPICS)[i % len(TOPICS)]
            words = list(rng.choice(filler, 5)) + [key]
            rng.shuffle(words)
            f.write(json.dumps({"text": " ".join(words), "label": TOPICS[key]}) + "\n")
    return str(path)


@pytest.mark.parametrize("num_labels", [2, 3])
def test_sequence_classifier_matches_transformers_logits_loss_and_export(tmp_path, num_labels):
    ref = tiny_bert(tmp_path / "src", num_labels=num_labels, head="sequence")
    model, _ = jaxlm.load_pretrained(tmp_path / "src")
    assert type(model).__name__ == "BertForSequenceClassification"
    ids, mask = padded_batch(seed=5)
    types = np.zeros_like(ids)
    labels = np.arange(len(ids)) % num_labels
    logits = model(jnp.asarray(ids), jnp.asarray(mask))
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                  labels=torch.tensor(labels))
    np.testing.assert_allclose(np.asarray(logits), out.logits.numpy(), atol=1e-5)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels.astype(np.int32)}
    loss_sum, count, *_ = losses.loss_terms("classification", model, batch)
    assert float(loss_sum / count) == pytest.approx(out.loss.item(), abs=1e-5)  # binary = 2-way softmax, as HF

    jaxlm.export_pretrained(model, tmp_path / "out")
    back, info = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out",
                                                                                output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert back.config.problem_type == "single_label_classification"
    np.testing.assert_allclose(torch_logits(back.eval(), ids, mask), np.asarray(logits), atol=1e-5)


def test_a_new_sequence_classifier_keeps_the_encoder_and_its_pooler(tmp_path):
    ref = tiny_bert(tmp_path)
    model, _ = jaxlm.load_pretrained(tmp_path, architecture="BertForSequenceClassification",
                                     config_overrides={"id2label": {"0": "no", "1": "yes"}})
    np.testing.assert_array_equal(np.asarray(model.bert.pooler.dense.kernel[...]),
                                  ref.pooler.dense.weight.detach().numpy().T)
    assert model.classifier.kernel[...].shape == (64, 2)


def test_a_lora_classifier_loads_in_peft_with_its_trained_head_and_the_same_logits(tmp_path):
    from peft import PeftModel

    tiny_bert(tmp_path / "base")
    labels = {"0": "neg", "1": "neu", "2": "pos"}
    model, _ = jaxlm.load_pretrained(tmp_path / "base", architecture="BertForSequenceClassification",
                                     config_overrides={"id2label": labels})
    apply_lora(model, ["q", "v"], rank=2, alpha=4.0)
    rng = np.random.RandomState(0)  # as after training: adapters and the new head moved
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.LoRAParam, nnx.PathContains("classifier")))):
        var.set_value(var.get_value() + 0.1 * rng.standard_normal(var.get_value().shape).astype(np.float32))
    save_peft_adapter(model, str(tmp_path / "adapter"), modules_to_save=("classifier",))
    assert json.loads(Path(tmp_path / "adapter" / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    base = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=3)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    ids, mask = padded_batch(seed=6)
    np.testing.assert_allclose(torch_logits(peft_model, ids, mask), np.asarray(model(ids, mask)), atol=1e-5)


def test_classification_batches_carry_one_label_per_row(tmp_path):
    tokenizer = bert_tokenizer(str(tmp_path / "tok"))
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"text": "the cat sat", "label": "pets"}, {"text": "rain and sun", "label": "weather"},
        {"text": "the dog ran", "label": "pets"}]))
    pipeline = build_pipeline([str(path)], tokenizer, task="classification", seq_len=8, batch_size=4, seed=0,
                              repeat=False, shard_index=0, shard_count=1)
    (batch,) = list(pipeline)
    assert pipeline.label_names == ["pets", "weather"]
    assert batch["input_ids"].shape == (4, 8) and batch["labels"].tolist() == [0, 1, 0, -100]  # a padding row
    assert tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True) == "the cat sat"


def test_integer_labels_and_labels_outside_the_configured_set(tmp_path):
    tokenizer = bert_tokenizer(str(tmp_path / "tok"))
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(json.dumps({"text": "hi", "label": i % 3 * 5}) + "\n" for i in range(6)))
    options = dict(task="classification", seq_len=8, batch_size=2, seed=0, repeat=False, shard_index=0, shard_count=1)
    assert build_pipeline([str(path)], tokenizer, **options).label_names == ["0", "5", "10"]
    with pytest.raises(DataError, match=r"ids.jsonl:3: label '10' is not one of the labels \['0', '5'\]"):
        build_pipeline([str(path)], tokenizer, label_names=["0", "5"], **options)
    path.write_text('{"text": "no label here"}\n')
    with pytest.raises(DataError, match=r"ids.jsonl:1: classification records need a 'label'"):
        build_pipeline([str(path)], tokenizer, **options)


def test_configured_label_names_must_be_a_full_id_map():
    with pytest.raises(ConfigError, match="model.config_overrides.id2label must map 0, 1, ... n-1"):
        load_config(None, ['model.config_overrides={"id2label": {"1": "a", "2": "b"}}'])


def test_a_tiny_bert_learns_topics_and_its_scores_are_what_sklearn_gives_the_export(tmp_path):
    model_dir = write_tiny_bert(tmp_path / "bert")
    cfg = tiny_config(tmp_path, model_dir, "classification", [write_topics(tmp_path / "topics.jsonl")],
                      "train.steps=40", "eval.every=20", "train.batch_size=8", "train.learning_rate=0.005",
                      "train.seq_len=12", "checkpoint.every=40")
    result = train(cfg, progress=False)
    final = [r for r in read_metrics(os.path.join(cfg.output_dir, "metrics.jsonl")) if "eval_accuracy" in r][-1]
    assert result.eval_losses[-1][1] < result.eval_losses[0][1]
    assert final["eval_accuracy"] > 0.8  # three topics: chance is a third
    report = Path(os.path.join(cfg.output_dir, "classification_report.txt")).read_text()
    assert "weather" in report and "macro avg" in report

    hf = transformers.AutoModelForSequenceClassification.from_pretrained(os.path.join(cfg.output_dir, "hf")).eval()
    assert [hf.config.id2label[i] for i in range(3)] == ["pets", "places", "weather"]
    _, evaluation, _ = build_pipelines(cfg, result.tokenizer, ["pets", "places", "weather"])
    true, predicted = [], []
    for batch in first_batches(evaluation, cfg.eval.steps):
        real = batch["labels"] != -100
        with torch.no_grad():
            logits = hf(**{k: torch.tensor(batch[k], dtype=torch.long)
                           for k in ("input_ids", "attention_mask", "token_type_ids")}).logits.numpy()
        true += batch["labels"][real].tolist()
        predicted += logits.argmax(-1)[real].tolist()
    assert final["eval_accuracy"] == pytest.approx(accuracy_score(true, predicted))
    assert final["eval_macro_f1"] == pytest.approx(f1_score(true, predicted, average="macro", labels=[0, 1, 2]))
