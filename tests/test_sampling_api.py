"""`jaxlm.generate` with a tokenizer: text and chat prompts in, texts out."""

from __future__ import annotations

import importlib

import pytest
import transformers

import jaxlm
from hf_checkpoints import tiny_llama

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_chat_checkpoint(path):
    """A tiny Llama plus a byte-level BPE tokenizer (ids < 300, <|im_end|> = EOS = 2) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(["hello world, the capital of France is Paris."] * 10, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tiny_llama(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    return jaxlm.load_pretrained(tiny_chat_checkpoint(tmp_path_factory.mktemp("chat")))


def test_jaxlm_generate_is_the_function_and_the_entry_point_module_cannot_shadow_it(chat_model):
    # jaxlm/generate.py exists for `python -m jaxlm.generate`; imported, it leaves the function in its place.
    assert importlib.import_module("jaxlm.generate") is jaxlm.sampling.api.generate
    model, tokenizer = chat_model
    assert "generate" in jaxlm.__all__ and jaxlm.generate is jaxlm.sampling.api.generate
    result = jaxlm.generate(model, tokenizer, "hello", max_new_tokens=2)
    assert result.token_ids == jaxlm.sampling.generate(model, tokenizer, "hello", max_new_tokens=2).token_ids


def test_text_prompts_give_texts_decoded_from_the_new_tokens(chat_model):
    model, tokenizer = chat_model
    result = jaxlm.generate(model, tokenizer, ["hello world", "Paris"], max_new_tokens=6, stop_at_eos=False)
    assert result.texts == [tokenizer.decode(ids, skip_special_tokens=True) for ids in result.token_ids]
    assert result.prompt_lengths == [len(tokenizer("hello world")["input_ids"]), len(tokenizer("Paris")["input_ids"])]


def test_a_single_string_is_one_prompt(chat_model):
    model, tokenizer = chat_model
    assert len(jaxlm.generate(model, tokenizer, "hello world", max_new_tokens=3).token_ids) == 1


def test_chat_messages_go_through_the_chat_template(chat_model):
    model, tokenizer = chat_model
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    templated = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(templated, add_special_tokens=False)["input_ids"]
    from_chat = jaxlm.generate(model, tokenizer, [messages], max_new_tokens=5)
    assert from_chat.prompt_lengths == [len(ids)]
    assert from_chat.token_ids == jaxlm.generate(model, tokenizer, [ids], max_new_tokens=5).token_ids


def test_chat_flag_wraps_a_string_as_a_user_message(chat_model):
    model, tokenizer = chat_model
    wrapped = jaxlm.generate(model, tokenizer, "hello", max_new_tokens=5, chat=True)
    explicit = jaxlm.generate(model, tokenizer, [[{"role": "user", "content": "hello"}]], max_new_tokens=5)
    assert wrapped.token_ids == explicit.token_ids


def test_stop_token_is_kept_in_token_ids_but_not_in_text(chat_model):
    model, tokenizer = chat_model
    free = jaxlm.generate(model, tokenizer, "hello world", max_new_tokens=8, stop_at_eos=False)
    stop = free.token_ids[0][4]
    cut = free.token_ids[0].index(stop)
    result = jaxlm.generate(model, tokenizer, "hello world", max_new_tokens=8, stop_token_ids=[stop])
    assert result.token_ids[0] == free.token_ids[0][: cut + 1]
    assert result.texts[0] == tokenizer.decode(free.token_ids[0][:cut], skip_special_tokens=True)


def test_more_prompts_than_batch_size_keep_their_order(chat_model):
    model, tokenizer = chat_model
    prompts = ["hello", "the capital of France is", "hi", "world"]
    together = jaxlm.generate(model, tokenizer, prompts, max_new_tokens=4)
    in_pairs = jaxlm.generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=2)
    assert in_pairs.token_ids == together.token_ids


def test_chat_without_a_template_is_a_clear_error(chat_model):
    model, tokenizer = chat_model
    plain = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="no chat_template"):
        jaxlm.generate(model, plain, "hello", chat=True)
