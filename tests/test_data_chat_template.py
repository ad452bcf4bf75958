"""Compiled chat templates: same text as apply_chat_template, same SFT tokens as rendering per prefix."""

import copy
import importlib.util
import re

import numpy as np
import pytest

from jaxlm.data.encode import LMEncoder
from jaxlm.text.chat_template import ChatTemplate, ChatTemplateError, TemplateRefused, prefix_spans

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Trims contents (Llama 3 does): a sentinel at a content's edge would stop the trim.
TRIMMING = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] | trim + '<|im_end|>\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# The assistant header is not the generation prompt: the one-render shortcut does not apply.
UNEVEN = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ 'A: ' + m['content'] + ' <|im_end|>\n' }}"
          "{% else %}{{ 'U: ' + m['content'] + '\n' }}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}{{ 'A:' }}{% endif %}")


@pytest.fixture(scope="module")
def smollm(smollm2_gguf):
    from jaxlm.hf import gguf
    return gguf.tokenizer(gguf._open(smollm2_gguf), smollm2_gguf)


@pytest.fixture(scope="module")
def conversations(tmp_path_factory):
    """Real multi-turn chats: 100 chit-chat conversations and every multi-turn ChatterBot one."""
    for package in ("chatterbot_corpus", "chitchat_dataset"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} not installed")
    from jaxlm.data.builders import dataset_builder

    folder = str(tmp_path_factory.mktemp("tfds"))
    chitchat = [e["messages"] for e in dataset_builder("jaxlm_chitchat", folder).read()]
    chatterbot = [e["messages"] for e in dataset_builder("jaxlm_chatterbot", folder).read()]
    return chitchat[::len(chitchat) // 100][:100] + [m for m in chatterbot if len(m) > 2]


def prefix_definition(tokenizer, messages, seq_len):
    """The documented encoding: apply_chat_template per prefix, token flags by offsets, truncated."""
    def render(prefix, add_generation_prompt=False):
        return tokenizer.apply_chat_template(prefix, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    text, spans = prefix_spans(render, messages)
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = np.array([start for start, _ in out["offset_mapping"]])
    trained = np.zeros(len(starts), np.int32)
    for start, end in spans:
        trained[(starts >= start) & (starts < end)] = 1
    return np.asarray(out["input_ids"], np.int32)[:seq_len + 1], trained[:seq_len + 1]


@pytest.mark.parametrize("seq_len", [100_000, 512])  # whole conversations; and SFT's truncation
def test_sft_tokens_and_flags_match_the_prefix_definition_on_real_chats(smollm, conversations, seq_len):
    encoder = LMEncoder(smollm, task="sft", seq_len=seq_len)
    assert encoder.chat_template.turn_suffix == "<|im_end|>"  # the one-render shortcut is in use
    documents = encoder.encode([("messages", {"messages": m}) for m in conversations])
    assert sum(len(m) for m in conversations) > 1000  # plenty of turns
    for messages, [(ids, trained)] in zip(conversations, documents, strict=False):
        expected_ids, expected_trained = prefix_definition(smollm, messages, seq_len)
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_array_equal(trained, expected_trained)


def test_render_matches_apply_chat_template(smollm, conversations):
    template = ChatTemplate.from_tokenizer(smollm)
    for messages in conversations[:20]:
        for add_generation_prompt in (False, True):
            assert template.render(messages, add_generation_prompt) == smollm.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("source", [CHATML, TRIMMING, UNEVEN])
def test_spans_match_the_prefix_definition_whichever_path_is_taken(smollm, source):
    template = ChatTemplate(source, smollm.special_tokens_map)
    chats = [[{"role": "user", "content": " padded "}, {"role": "assistant", "content": "\nreply \n"}],
             [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
              {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"},
              {"role": "assistant", "content": ""}]]
    for messages in chats:
        assert template.render(messages) == smollm.apply_chat_template(
            messages, tokenize=False, chat_template=source)
        assert template.assistant_spans(messages) == prefix_spans(template.render, messages)


def test_only_turn_local_templates_take_the_one_render_shortcut(smollm):
    assert ChatTemplate(CHATML, {}).turn_suffix == "<|im_end|>"
    assert ChatTemplate(UNEVEN, {}).turn_suffix is None


def test_generation_blocks_render_their_body_like_transformers(smollm):
    source = CHATML.replace("m['content'] + '<|im_end|>\n' }}",
                            "m['content'] }}{% generation %}{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert ChatTemplate(source, {}).render(messages) == smollm.apply_chat_template(
        messages, tokenize=False, chat_template=source)


def test_template_errors_reach_the_caller_naming_the_template(smollm):
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}", {}, origin="model.gguf")
    assert template.turn_suffix is None
    with pytest.raises(TemplateRefused, match="model.gguf: .*roles must alternate"):
        template.assistant_spans([{"role": "user", "content": "hi"}])


def test_templates_that_rewrite_earlier_turns_are_refused_for_sft(smollm):
    # Earlier turns render differently once a later one exists: no prefix gives the span.
    source = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}"
              "{% if not loop.last %}{{ ' (then)' }}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}")
    smollm_copy = copy.deepcopy(smollm)
    smollm_copy.chat_template = source
    encoder = LMEncoder(smollm_copy, task="sft", seq_len=64)
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                         {"role": "user", "content": "bye"}]}
    with pytest.raises(ValueError, match="prefix by prefix"):
        encoder.encode([("messages", chat)])


HOSTILE = {  # a chat template comes with a model file: each of these must stop, at once, naming the file
    "nested loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                     "more than 1,000,000 loop iterations and calls"),
    "doubling a string": ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                          "{% endfor %}{{ ns.s }}", "at most 67,108,864 allowed"),
    "string times a huge number": ("{{ 'x' * 10 ** 10 }}", "a value of size 10,000,000,000"),
    "a huge power": ("{{ 10 ** (10 ** 10) }}", "render budget"),
    "endless recursion": ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recurses too deeply"),
    "sandbox escape": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox forbids"),
    "syntax error": ("{% for %}", "chat template line 1"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_templates_are_stopped(name):
    source, message = HOSTILE[name]
    with pytest.raises(ChatTemplateError, match=r"^evil\.gguf: .*" + re.escape(message)):
        ChatTemplate(source + "{{ messages[0]['content'] }}", {}, origin="evil.gguf").render(
            [{"role": "user", "content": "hi"}])


def test_a_render_has_a_time_budget_too():
    from jaxlm.text import template_sandbox

    slow = template_sandbox.compile_template("{% for i in range(100000) %}{{ i }}{% endfor %}")
    with pytest.raises(template_sandbox.OverBudget, match="more than 0.001 s"):
        template_sandbox.render_bounded(slow, template_sandbox.Budget(seconds=0.001))
    assert len(template_sandbox.render_bounded(slow)) == 488890  # within the default budget


# Gemma 2's template as google/gemma-2-*-it ship it (Gemma 3's raises the same way on roles that do not alternate).
GEMMA2 = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
          "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
          "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")


def test_gemma_template_renders_as_transformers_and_its_refusal_of_a_system_turn_is_a_chat_template_error():
    from transformers.utils.chat_template_utils import render_jinja_template

    chat = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    template = ChatTemplate(GEMMA2, {"bos_token": "<bos>"}, origin="gemma-2-2b-it")
    want = render_jinja_template([chat], chat_template=GEMMA2, bos_token="<bos>")[0][0]
    assert template.render(chat) == want
    text, spans = template.assistant_spans(chat)
    assert [text[start:end] for start, end in spans] == ["Blue.<end_of_turn>"]  # what SFT trains on
    with pytest.raises(TemplateRefused, match=r"^gemma-2-2b-it: .*System role not supported") as refused:
        template.assistant_spans([{"role": "system", "content": "Be brief."}, *chat])
    assert refused.value.label == "chat template error" and "\n" not in str(refused.value)
