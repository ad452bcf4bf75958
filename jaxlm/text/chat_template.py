"""A tokenizer's chat template, compiled once, and SFT spans from one render.

``tokenizer.apply_chat_template(messages, tokenize=False)`` re-reads the
template, copies and normalises the messages, and renders -- fine for one
call, but the SFT loss mask needs the assistant turns, which the plain
definition finds by rendering every prefix of the conversation (quadratic in
turns, all under the GIL):

    start of assistant turn i = len(render(messages[:i], add_generation_prompt=True))   (0 if i == 0)
    end of assistant turn i   = len(render(messages[:i + 1]).rstrip())

(the end-of-turn token is trained, so the model learns to stop).
:class:`ChatTemplate` renders the way ``apply_chat_template`` does -- the same
sandboxed jinja2 settings as transformers' ``chat_template_utils``, the same
variables -- and finds those spans in ONE render of the whole conversation
(plus one plain render that checks it, so linear in turns): every message's
content is wrapped in private-use sentinel characters, so the render shows
where each content starts and ends. For "turn-local" templates such as ChatML
(SmolLM2, Qwen), an assistant turn's span starts where its content starts and
ends after a fixed end-of-turn text. Whether the template is turn-local is
checked once, when the template is loaded, against the prefix definition on
probe conversations; each conversation is also checked (its sentinel render,
sentinels removed, must be the plain render with every content in order and
unchanged, and every assistant content must be followed by the end-of-turn
text). Anything that fails a check -- templates that move the assistant
header, trim or rewrite contents, non-text contents -- takes the prefix
definition, rendered with the compiled template.
"""

from __future__ import annotations

import jinja2

from jaxlm.errors import UserError
from jaxlm.text.template_sandbox import OverBudget, compile_template, render_bounded

Spans = list[tuple[int, int]]

_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters: never in real text (checked)
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # as transformers aliases them
_PROBES = (  # conversations the turn-local shortcut must reproduce exactly, see _turn_local_suffix
    [("user", "Hi there"), ("assistant", "Hello! How can I help?")],
    [("user", "One"), ("assistant", "Two"), ("user", "Three?"), ("assistant", "Four.")],
    [("system", "Be brief."), ("user", "Name a colour."), ("assistant", "Blue."),
     ("user", "Another."), ("assistant", "Red.")],
    [("assistant", "I speak first."), ("user", "Fine."), ("assistant", "Thanks.")],
    [("user", "Line one\nline two"), ("assistant", "A\nB"), ("user", "ok"), ("assistant", "done")],
)


class ChatTemplateError(UserError):
    """A chat template that cannot be used: a syntax error, something the sandbox forbids, a render
    past its budget (see :mod:`jaxlm.text.template_sandbox`). The message names the template's file."""

    label = "chat template error"


class TemplateRefused(ChatTemplateError):
    """The template refused a conversation (``raise_exception``, a field it needs is missing)."""


def _normalise(messages: list[dict]) -> list[dict]:
    """What ``apply_chat_template`` hands the template: None values dropped, reasoning aliased."""
    out = []
    for message in messages:
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


class NotPrefixStable(ChatTemplateError):
    """Earlier turns render differently once later ones exist: the SFT loss mask cannot be found."""


def prefix_spans(render, messages: list[dict], where: str = "") -> tuple[str, Spans]:
    """(full text, assistant spans) by the prefix definition, with any ``render(messages, gen)``."""
    full = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:i], True) if i else ""
        through = render(messages[: i + 1], False).rstrip()
        if not (full.startswith(before) and full.startswith(through)):
            raise NotPrefixStable(f"{where}the chat template does not render conversations prefix by "
                                  "prefix; cannot locate the assistant turns for the loss mask")
        spans.append((len(before), len(through)))
    return full, spans


class ChatTemplate:
    """A tokenizer's chat template: ``render`` and ``assistant_spans`` without the tokenizer.

    Thread-safe (a compiled jinja2 template is). ``turn_suffix`` is the
    end-of-turn text after an assistant content when the template is
    turn-local, else None (every conversation then takes the prefix path).
    Every render is bounded (:mod:`jaxlm.text.template_sandbox`); what goes
    wrong is a :class:`ChatTemplateError` naming ``origin`` (the model file).
    A template that spins or is forbidden usually fails here, on the probes.
    """

    def __init__(self, source: str, variables: dict[str, str], origin: str = ""):
        self.source, self._variables = source, dict(variables)
        self.origin = origin
        self._where = f"{origin}: " if origin else ""
        try:
            self._template = compile_template(source)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise ChatTemplateError(f"{self._where}chat template line {e.lineno}: {e.message}") from None
        self.turn_suffix = self._turn_local_suffix()

    @classmethod
    def from_tokenizer(cls, tokenizer) -> ChatTemplate | None:
        """The tokenizer's default chat template (None when it has none); ChatTemplateError if unusable."""
        try:
            source = tokenizer.get_chat_template()
        except (AttributeError, ValueError):
            source = getattr(tokenizer, "chat_template", None)
        if not isinstance(source, str) or not source:
            return None
        return cls(source, tokenizer.special_tokens_map, getattr(tokenizer, "name_or_path", "") or "")

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """``apply_chat_template(messages, tokenize=False, add_generation_prompt=...)``."""
        return self._render(_normalise(messages), add_generation_prompt)

    def _render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        try:
            return render_bounded(self._template, messages=messages, tools=None, documents=None,
                                  add_generation_prompt=add_generation_prompt, **self._variables)
        except OverBudget as e:
            raise ChatTemplateError(f"{self._where}the chat template went past its render budget ({e}); "
                                    "it is refused") from None
        except jinja2.exceptions.SecurityError as e:
            raise ChatTemplateError(f"{self._where}the chat template does what the sandbox forbids ({e})") from None
        except RecursionError:
            raise ChatTemplateError(f"{self._where}the chat template recurses too deeply") from None
        except (jinja2.exceptions.TemplateError, TypeError, ValueError, LookupError, ArithmeticError) as e:
            raise TemplateRefused(f"{self._where}the chat template refused the conversation "
                                  f"({type(e).__name__}: {e})") from None

    def assistant_spans(self, messages: list[dict]) -> tuple[str, Spans]:
        """(rendered conversation, character spans of its assistant turns), see the module doc."""
        if self.turn_suffix is not None:
            found = self._one_render_spans(messages, self.turn_suffix)
            if found is not None:
                return found
        return prefix_spans(self.render, messages, self._where)

    def _one_render_spans(self, messages: list[dict], suffix: str) -> tuple[str, Spans] | None:
        """The spans from one sentinel render, or None where the shortcut's checks fail."""
        messages, marked = _normalise(messages), []
        for message in messages:
            content = message.get("content")
            if not isinstance(content, str) or _OPEN in content or _CLOSE in content:
                return None
            marked.append({**message, "content": _OPEN + content + _CLOSE})
        try:
            text = self._render(marked)
        except TemplateRefused:
            return None  # let the prefix path raise (or not) on the real contents
        pieces = text.split(_OPEN)  # [head, content + CLOSE + tail, ...], one per rendered content
        if len(pieces) != len(messages) + 1:
            return None  # a content rendered twice or not at all
        full, contents = [pieces[0]], []
        at = len(pieces[0])
        for piece in pieces[1:]:
            parts = piece.split(_CLOSE)
            if len(parts) != 2:
                return None
            contents.append((at, at + len(parts[0])))
            full += parts
            at += len(parts[0]) + len(parts[1])
        full = "".join(full)
        if full != self._render(messages):
            return None  # the template rewrites contents (trim, slicing, ...): sentinels shift them
        spans = []
        for i, (message, (start, end)) in enumerate(zip(messages, contents, strict=False)):
            if full[start:end] != message["content"]:
                return None  # contents rendered out of order, or changed
            if message["role"] != "assistant":
                continue
            if not full.startswith(suffix, end):
                return None
            spans.append((start if i else 0, end + len(suffix)))
        return full, spans

    def _turn_local_suffix(self) -> str | None:
        """The end-of-turn text if the one-render shortcut matches the prefix definition on the probes.

        A probe the template refuses to render at all (``raise_exception``,
        e.g. "roles must alternate") is skipped: no real conversation of that
        shape can be encoded either way.
        """
        suffix, checked = None, 0
        for probe in _PROBES:
            messages = [{"role": role, "content": content} for role, content in probe]
            try:
                self.render(messages)
            except TemplateRefused:
                continue
            try:
                expected = prefix_spans(self.render, messages)
            except (TemplateRefused, NotPrefixStable):
                return None  # not prefix-stable: only the prefix path gives the documented error
            if suffix is None:  # learn it from the first assistant turn rendered
                first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
                content, turn = messages[first]["content"], expected[1][0]
                found = expected[0].rfind(content, 0, turn[1])
                if found < 0:
                    return None  # the template does not render the content as it is
                end_of_content = found + len(content)
                suffix = expected[0][end_of_content:turn[1]]
                if not suffix or suffix != suffix.rstrip():
                    return None  # the end would depend on rstrip() of the content
            if self._one_render_spans(messages, suffix) != expected:
                return None
            checked += 1
        return suffix if checked else None
