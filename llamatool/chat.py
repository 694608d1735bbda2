"""Chat templates: a model's `tokenizer.chat_template` (Jinja), rendered in a sandbox.

    template = ChatTemplate.from_gguf(reader)
    prompt = template.render([{"role": "user", "content": "Hi"}])
    ids = tok.encode(prompt, add_special=not template.starts_with_bos(prompt), parse_special=True)

Rendering follows Hugging Face's apply_chat_template: the same Jinja settings (trim_blocks,
lstrip_blocks, loop controls), variables (messages, add_generation_prompt, bos_token,
eos_token, tools, plus any keyword given) and helpers (raise_exception, strftime_now, a
tojson that does not escape HTML), so a template renders as it does in transformers.

A template is untrusted code from a downloaded file. It runs in Jinja's immutable sandbox,
and any touch of a Python internal (an attribute starting with "_", like __class__ or
__globals__) stops rendering with an error instead of quietly rendering nothing.

Models without a template get a fallback: ChatML when the vocabulary has <|im_start|> and
<|im_end|> (as llama.cpp falls back to ChatML), else plain text blocks:

    System: {system}

    User: {user}

    Assistant: {assistant}

with "Assistant:" left open when a reply is wanted.
"""

from __future__ import annotations

import json
from datetime import datetime

from .errors import LlamatoolError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PLAIN = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
TEMPLATE_KEY = "tokenizer.chat_template"
# A template is code: these bound what one rendering may cost, so a hostile one cannot hang
# or exhaust memory (range() items over the whole rendering, and the size of a `*` product).
RANGE_BUDGET = 1_000_000
MAX_PRODUCT = 10_000_000


class ChatTemplateError(LlamatoolError):
    """A chat template that does not compile, fails, or reaches for Python internals."""


def _environment(range_budget: list[int]):
    from jinja2 import nodes
    from jinja2.exceptions import SecurityError
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` (assistant-mask markers): render the body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    class StrictSandbox(ImmutableSandboxedEnvironment):
        """The immutable sandbox, failing at once on unsafe attributes (Jinja's default is an
        undefined value that prints as nothing)."""

        intercepted_binops = frozenset({"*", "**"})

        def unsafe_undefined(self, obj, attribute):
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 256:
                raise SecurityError("exponent too large")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_PRODUCT:
                        raise SecurityError("result of * too large")
            return super().call_binop(context, operator, left, right)

    def budgeted_range(*args):
        r = range(*args)
        range_budget[0] -= len(r)
        if range_budget[0] < 0:
            raise SecurityError(f"template loops over more than {RANGE_BUDGET} range() items")
        return r

    env = StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, GenerationBlock])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, range=budgeted_range)
    return env


class _TemplateRaised(Exception):
    """raise_exception() called by the template itself."""


def _raise_exception(message):
    raise _TemplateRaised(str(message))


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template and the BOS/EOS texts it is rendered with."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", name: str = "model"):
        from jinja2.exceptions import TemplateError

        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.name = name  # "model", "chatml" or "plain": where the template came from
        self._range_budget = [RANGE_BUDGET]
        try:
            self._template = _environment(self._range_budget).from_string(source)
        except TemplateError as e:
            raise ChatTemplateError(f"chat template does not compile: {_describe(e)}") from None

    @classmethod
    def from_gguf(cls, reader) -> "ChatTemplate":
        """The model's template, or the fallback (see the module docstring)."""
        tokens = reader.get("tokenizer.ggml.tokens") or []

        def text_of(key: str) -> str:
            i = reader.get(f"tokenizer.ggml.{key}_token_id")
            return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else ""

        bos, eos = text_of("bos"), text_of("eos")
        source = reader.get(TEMPLATE_KEY)
        if isinstance(source, str) and source.strip():
            return cls(source, bos, eos, "model")
        if "<|im_start|>" in tokens and "<|im_end|>" in tokens:
            return cls(CHATML, bos, eos, "chatml")
        return cls(PLAIN, bos, eos, "plain")

    def render(self, messages: list[dict], add_generation_prompt: bool = True, tools=None, **variables) -> str:
        """The prompt text for messages ([{"role": ..., "content": ...}, ...])."""
        from jinja2.exceptions import SecurityError, TemplateError

        _check_messages(messages)
        context = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **variables,
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "tools": tools,
        }
        self._range_budget[0] = RANGE_BUDGET
        try:
            return self._template.render(**context)
        except _TemplateRaised as e:
            raise ChatTemplateError(f"chat template refused the messages: {e}") from None
        except SecurityError as e:
            raise ChatTemplateError(f"chat template refused: unsafe operation ({e})") from None
        except TemplateError as e:
            raise ChatTemplateError(f"chat template failed: {_describe(e)}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError, RecursionError) as e:
            raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None

    def starts_with_bos(self, prompt: str) -> bool:
        """Whether a rendered prompt already begins with the BOS text (then do not add another)."""
        return bool(self.bos_token) and prompt.startswith(self.bos_token)


def _check_messages(messages) -> None:
    if not isinstance(messages, list):
        raise LlamatoolError("chat messages must be a list of {'role': ..., 'content': ...}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise LlamatoolError(f"chat message {i} must be a dict with a 'role' string")


def _describe(e) -> str:
    line = getattr(e, "lineno", None)
    msg = str(getattr(e, "message", None) or e).splitlines()[0] if str(e) else type(e).__name__
    return f"line {line}: {msg}" if line else msg
