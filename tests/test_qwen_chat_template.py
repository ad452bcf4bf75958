"""A Qwen3-style ChatML template (tools, reasoning in <think>, enable_thinking) in jaxlm's sandboxed renderer.

The template below is written in the shape of Qwen3's tokenizer template, with the constructs it
uses: a `tools` branch with `tojson`, a `namespace` scan backwards over the messages, string
slicing and `split`/`lstrip`/`rstrip`, `is string` tests and the `enable_thinking` switch.
"""

from __future__ import annotations

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from jaxlm.text.chat_template import ChatTemplate, NotPrefixStable
from jaxlm.text.template_sandbox import compile_template, render_bounded

QWEN3_STYLE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}
{{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for forward_message in messages %}
{%- set index = (messages|length - 1) - loop.index0 %}
{%- set message = messages[index] %}
{%- set tool_start = '<tool_response>' %}
{%- if ns.multi_step_tool and message.role == 'user' and message.content[:tool_start|length] != tool_start %}
{%- set ns.multi_step_tool = false %}
{%- set ns.last_query_index = index %}
{%- endif %}
{%- endfor %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{%- set content = message.content %}
{%- set reasoning_content = '' %}
{%- if '</think>' in content %}
{%- set reasoning_content = (content.split('</think>')|first).rstrip('\\n').split('<think>')|last %}
{%- set content = (content.split('</think>')|last).lstrip('\\n') %}
{%- endif %}
{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content }}
{%- else %}
{{- '<|im_start|>assistant\\n' + content }}
{%- endif %}
{%- for tool_call in message.tool_calls or [] %}
{%- set call = tool_call.function if tool_call.function else tool_call %}
{{- '\\n<tool_call>\\n{"name": "' + call.name + '", "arguments": ' }}
{{- call.arguments if call.arguments is string else call.arguments | tojson }}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}
{%- endif %}
"""

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "",
     "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "18C, sunny"},
    {"role": "assistant", "content": "<think>\nThe tool said so.\n</think>\n\nSunny, 18C."},
    {"role": "user", "content": "And tomorrow?"},
]
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather for a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


def transformers_render(messages, **variables):
    return render_jinja_template([messages], chat_template=QWEN3_STYLE, **variables)[0][0]


@pytest.mark.parametrize("variables", [
    dict(add_generation_prompt=True),
    dict(add_generation_prompt=True, enable_thinking=False),
    dict(add_generation_prompt=True, tools=TOOLS),
    dict(add_generation_prompt=False, tools=TOOLS, enable_thinking=True),
])
def test_the_sandbox_renders_every_branch_as_transformers_does(variables):
    variables = {"tools": None, "documents": None, **variables}
    ours = render_bounded(compile_template(QWEN3_STYLE), messages=CHAT, **variables)
    assert ours == transformers_render(CHAT, **variables)
    assert ("<tools>" in ours) == bool(variables["tools"])
    assert ours.endswith("<think>\n\n</think>\n\n") == (variables.get("enable_thinking") is False)


def test_sft_spans_of_one_turn_and_a_one_line_refusal_of_multi_turn_chats():
    """Qwen3's template drops the <think> block of assistant turns before the last question, so a
    multi-turn chat does not render prefix by prefix: SFT refuses it with one line, not a wrong mask."""
    template = ChatTemplate(QWEN3_STYLE, {"eos_token": "<|im_end|>"}, origin="qwen3")
    question = [{"role": "user", "content": "Name a colour."}]
    assert template.render(question, add_generation_prompt=True) == transformers_render(
        question, add_generation_prompt=True)
    answer = "<think>\nAny will do.\n</think>\n\nBlue."
    text, [(start, end)] = template.assistant_spans([*question, {"role": "assistant", "content": answer}])
    assert text[start:end] == answer + "<|im_end|>"
    two_turns = [*question, {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"},
                 {"role": "assistant", "content": "Red."}]
    with pytest.raises(NotPrefixStable, match="qwen3: the chat template does not render conversations prefix by"):
        template.assistant_spans(two_turns)
