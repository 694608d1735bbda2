"""Chat templates: rendered as transformers renders them, in a sandbox that refuses hostile templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamatool.chat import CHATML, PLAIN, ChatTemplate, ChatTemplateError
from llamatool.errors import LlamatoolError
from llamatool.gguf_io import GGUFReader
from tests.chat_cases import CONVERSATIONS, KNOWN
from tests.gguf_factory import write_gguf

REFERENCE = json.loads((Path(__file__).parent / "data" / "chat_reference.json").read_text())


def check_against_reference(template: ChatTemplate, name: str) -> None:
    for case in REFERENCE[name]:
        messages = CONVERSATIONS[case["conversation"]]
        expected = case["expected"]
        if isinstance(expected, dict):  # the template refuses these messages in transformers too
            with pytest.raises(ChatTemplateError, match="refused the messages"):
                template.render(messages, case["add_generation_prompt"])
        else:
            assert template.render(messages, case["add_generation_prompt"]) == expected, (name, case["conversation"])


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_templates_render_like_transformers(name):
    source, bos, eos = KNOWN[name]
    check_against_reference(ChatTemplate(source, bos, eos), name)


def test_smollm2_template_from_the_model(default_model):
    template = ChatTemplate.from_gguf(GGUFReader(default_model))
    assert template.name == "model" and (template.bos_token, template.eos_token) == ("<|im_start|>", "<|im_end|>")
    check_against_reference(template, "smollm2")


def test_phi3_template_from_gguf(tokenizer_vectors):
    template = ChatTemplate.from_gguf(GGUFReader(tokenizer_vectors / "ggml-vocab-phi-3.gguf"))
    check_against_reference(template, "phi-3")
    prompt = template.render(CONVERSATIONS["user"])
    assert template.starts_with_bos(prompt)  # "<s>" is already there: add_special=False when tokenizing


def test_llama2_roles_must_alternate():
    source, bos, eos = KNOWN["llama2"]
    with pytest.raises(LlamatoolError, match="Conversation roles must alternate"):
        ChatTemplate(source, bos, eos).render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_llama3_starts_with_bos():
    source, bos, eos = KNOWN["llama3"]
    template = ChatTemplate(source, bos, eos)
    assert template.starts_with_bos(template.render(CONVERSATIONS["user"]))
    assert not ChatTemplate(CHATML, bos, eos).starts_with_bos(ChatTemplate(CHATML).render(CONVERSATIONS["user"]))


def vocab_without_template(tmp_path, tokens):
    fields = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": [],
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 1,
    }
    return GGUFReader(write_gguf(tmp_path / "vocab.gguf", fields, {}))


def test_fallback_is_chatml_when_the_vocab_has_its_tokens(tmp_path):
    template = ChatTemplate.from_gguf(vocab_without_template(tmp_path, ["<|im_start|>", "<|im_end|>", "a"]))
    assert template.name == "chatml" and template.source == CHATML
    assert template.render([{"role": "user", "content": "Hi"}]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_fallback_is_plain_text_otherwise(tmp_path):
    template = ChatTemplate.from_gguf(vocab_without_template(tmp_path, ["<s>", "</s>", "a"]))
    assert template.name == "plain" and template.source == PLAIN
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    assert template.render(messages) == "System: Be kind.\n\nUser: Hi\n\nAssistant:"
    assert template.render(messages, add_generation_prompt=False) == "System: Be kind.\n\nUser: Hi\n\n"


def test_helpers_and_variables():
    source = (
        "{{ messages | length }}|{{ tools | tojson }}|{{ {'a': '<é>'} | tojson }}|{{ strftime_now('%Y') | length }}"
        "|{{ extra }}|{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{{ m.role }}{% endfor %}"
        "{% generation %}[gen]{% endgeneration %}"
    )
    out = ChatTemplate(source).render(CONVERSATIONS["system-user"], tools=[{"name": "f"}], extra="x")
    assert out == '2|[{"name": "f"}]|{"a": "<é>"}|4|x|user[gen]'


HOSTILE = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ raise_exception.__globals__ }}",
    "{% set x = messages.append({'role': 'x'}) %}",
    "{{ messages.__class__.mro() }}",
    "{{ namespace.__init__.__globals__['sys'] }}",
]


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_templates_are_refused(source):
    with pytest.raises(ChatTemplateError, match="refused"):
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "{{ 'x' * 10000000000 }}",
        "{{ [0] * 100000000 }}",
        "{{ 10 ** 100000 }}",
    ],
)
def test_expensive_templates_are_refused(source):
    with pytest.raises(ChatTemplateError, match="refused"):
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])


def test_broken_templates_are_clear_errors():
    with pytest.raises(ChatTemplateError, match="does not compile: line 1"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="failed"):
        ChatTemplate("{{ messages[0]['content'] + 1 }}").render([{"role": "user", "content": "x"}])
    with pytest.raises(LlamatoolError, match="role"):
        ChatTemplate(CHATML).render([{"content": "no role"}])
