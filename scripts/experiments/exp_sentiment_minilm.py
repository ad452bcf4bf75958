"""MiniLM sentiment: train the `configs/sentiment_minilm.yaml` preset, then score the whole test split.

Backs the header of `configs/sentiment_minilm.yaml`: accuracy 0.748, macro-F1 0.725 on the test
split (majority class 0.421), and the README's "the fine-tuned MiniLM preset is the one to use".

    .venv/bin/python scripts/experiments/exp_sentiment_minilm.py [dotted.key=value ...]

Prints accuracy and macro-F1 (scikit-learn) on `tfds:jaxlm_sentiment:test` for the trained model and,
side by side, the majority-class baseline, plus the per-class report. Not a test: it takes minutes.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, f1_score

from jaxlm.data import DataConfig, SourceConfig
from jaxlm.train import train
from jaxlm.train.config import load_config
from jaxlm.train.engine import build_engine


def main(overrides: list[str]) -> None:
    cfg = load_config("configs/sentiment_minilm.yaml", overrides)
    started = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - started
    from jaxlm.data import build_from_config

    test = DataConfig(train=cfg.data.train, eval=[SourceConfig("tfds:jaxlm_sentiment:test")], pack=False)
    labels = list(result.model.config.id2label)
    pipeline = build_from_config(test, result.tokenizer, task="classification", seq_len=cfg.train.seq_len,
                                 batch_size=cfg.train.batch_size, seed=0, split="eval", label_names=labels)
    engine = build_engine(result.model, cfg)
    true, predicted = [], []
    for batch in pipeline:
        _, _, _, prediction = engine.evaluate(batch)
        keep = batch["labels"] != -100
        true += batch["labels"][keep].tolist()
        predicted += np.asarray(prediction)[keep].tolist()
    majority = np.bincount(true).argmax()
    print(f"\ntrained {cfg.train.steps} steps in {seconds:.0f}s; test split: {len(true)} tweets")
    print(f"MiniLM:   accuracy {accuracy_score(true, predicted):.4f}  "
          f"macro-F1 {f1_score(true, predicted, average='macro'):.4f}")
    print(f"majority: accuracy {accuracy_score(true, [majority] * len(true)):.4f}  "
          f"macro-F1 {f1_score(true, [majority] * len(true), average='macro'):.4f}  ({labels[majority]})")
    print(classification_report(true, predicted, target_names=labels, digits=3))


if __name__ == "__main__":
    main(sys.argv[1:])
