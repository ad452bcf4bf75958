"""Phi-3's chat template (Phi-3.5-mini's tokenizer_config.json) on a tiny tokenizer: prompts, SFT spans, refusals.

The template ends a conversation without a generation prompt with the EOS token, so a multi-turn chat
does not render prefix by prefix: SFT trains single exchanges and stops on longer ones with one line.
"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import jaxlm
from jaxlm.data.encode import LMEncoder
from jaxlm.text.chat_template import ChatTemplate

PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
        "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
        "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
        "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def tokenizer():
    """Byte-level BPE with Phi-3's special tokens (<|endoftext|> is its EOS) and chat template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["Name a colour. Blue. Be brief. Another one? Red."] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                   eos_token="<|endoftext|>", chat_template=PHI3)


def test_prompts_render_as_transformers_renders_them(tokenizer):
    template = ChatTemplate.from_tokenizer(tokenizer)
    answered = [*QUESTION, {"role": "assistant", "content": "Blue."}]
    for messages, generation_prompt in ((QUESTION, True), (answered, False)):
        assert template.render(messages, generation_prompt) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt)
    [ids] = jaxlm.sampling.encode_prompts(tokenizer, [QUESTION], chat=True)
    assert tokenizer.decode(ids).endswith("<|end|>\n<|assistant|>\n")


def test_sft_trains_the_answer_through_its_end_tag_and_eos_and_refuses_multi_turn_in_one_line(tokenizer):
    encoder = LMEncoder(tokenizer, task="sft", seq_len=64)
    chat = {"messages": [*QUESTION, {"role": "assistant", "content": "Blue."}]}
    [[(ids, trained)]] = encoder.encode([("messages", chat)])
    assert tokenizer.decode([t for t, flag in zip(ids, trained, strict=True) if flag]) == "Blue.<|end|>\n<|endoftext|>"
    two_turns = {"messages": [*chat["messages"], {"role": "user", "content": "Another one?"},
                              {"role": "assistant", "content": "Red."}]}
    with pytest.raises(ValueError, match="does not render conversations prefix by prefix"):
        encoder.encode([("messages", two_turns)])
