"""`llamatool run` and `llamatool warmup` as a user meets them: text on stdout, logs and timings on
stderr, no waiting on stdin, one-line errors, chat through the template with the history in
the KV cache."""

from __future__ import annotations

import pytest

from llamatool.model import Model

from .conftest import llamatool
from .tiny_llama import TinyLlama, random_weights, write_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    spec = TinyLlama(n_layer=1)
    return write_gguf(tmp_path_factory.mktemp("run") / "tiny.gguf", spec, random_weights(spec), "Q8_0").path


def greedy_text(path, prompt, n):
    return Model.load(path, n_threads=1).generate(prompt, max_tokens=n, temperature=0, stop_at_eog=True).text


def test_generates_greedy_text_on_stdout_and_timings_on_stderr(tiny):
    proc = llamatool("run", "-m", tiny, "-p", "Hello there", "-n", 8, "--temp", 0, "-t", 2)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Hello there" + greedy_text(tiny, "Hello there", 8)
    for text in ("load time", "prompt eval time", "eval time", "tokens per second", "loaded tiny.gguf"):
        assert text in proc.stderr


def test_no_display_prompt_and_prompt_files(tiny, tmp_path):
    expected = greedy_text(tiny, "The sky", 6)
    proc = llamatool("run", "-m", tiny, "-p", "The sky", "-n", 6, "--temp", 0, "--no-display-prompt")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("The sky", encoding="utf-8")
    assert llamatool("run", "-m", tiny, "-f", prompt_file, "-n", 6, "--temp", 0).stdout == "The sky" + expected
    assert llamatool("run", "-m", tiny, "-f", "-", "-n", 6, "--temp", 0, input="The sky").stdout == "The sky" + expected


def test_seed_reproduces_a_sampled_run(tiny):
    args = ("run", "-m", tiny, "-p", "Once", "-n", 12, "--temp", 1.5, "--top-k", 0, "--min-p", 0, "--top-p", 1)
    first = llamatool(*args, "-s", 7)
    assert first.returncode == 0, first.stderr
    assert llamatool(*args, "-s", 7).stdout == first.stdout
    assert llamatool(*args, "-s", 8).stdout != first.stdout
    assert "seed 7" in first.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        ((), "nothing to do"),
        (("-p", "x" * 200, "-c", 16), "longer than the context size 16"),
        (("-p", "hi", "-f", "prompt.txt"), "not both"),
        (("-f", "/nonexistent/prompt.txt"), "no such file"),
    ],
)
def test_errors_are_one_line(tiny, args, message):
    proc = llamatool("run", "-m", tiny, *args)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and message in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_missing_model_is_an_error(tmp_path):
    proc = llamatool("run", "-m", tmp_path / "none.gguf", "-p", "hi")
    assert proc.returncode == 1 and "error:" in proc.stderr and "no such file" in proc.stderr


def test_chat_reads_turns_from_a_pipe_and_keeps_history(tiny):
    proc = llamatool("run", "-m", tiny, "--chat", "-n", 4, "--temp", 0, "-sys", "Be brief.",
                     input="Hi there\nAnd again\n/exit\nnever read\n")
    assert proc.returncode == 0, proc.stderr
    replies = proc.stdout.strip("\n").split("\n")
    assert len([r for r in replies if r]) >= 1
    # the second turn evaluated only its new tokens: total prompt tokens < both prompts in full
    model = Model.load(tiny, n_threads=1)
    from llamatool.chat import ChatTemplate
    from llamatool.run import chat_prompt_ids

    template = ChatTemplate.from_gguf(model.reader)
    first = chat_prompt_ids(template, model.tokenizer, [{"role": "system", "content": "Be brief."},
                                                        {"role": "user", "content": "Hi there"}])
    prompt_tokens = int(proc.stderr.split("prompt eval time")[1].split("/")[1].split()[0])
    assert prompt_tokens < 2 * len(first)
    assert "never read" not in proc.stdout


def test_chat_template_bos_is_not_doubled(tiny):
    from llamatool.chat import ChatTemplate
    from llamatool.run import chat_prompt_ids

    tok = Model.load(tiny, n_threads=1).tokenizer
    assert tok.add_bos
    messages = [{"role": "user", "content": "Hi"}]
    with_bos = ChatTemplate("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}", bos_token="<|endoftext|>")
    ids = chat_prompt_ids(with_bos, tok, messages)
    assert ids[0] == tok.bos_id and ids[1] != tok.bos_id
    without = ChatTemplate("{% for m in messages %}{{ m['content'] }}{% endfor %}", bos_token="<|endoftext|>")
    ids = chat_prompt_ids(without, tok, messages)
    assert ids[0] == tok.bos_id and ids[1] != tok.bos_id


def test_chat_reply_stops_at_end_of_turn(default_model):
    """SmolLM2-Instruct ends its turn with <|im_end|>: the reply stops there, without it."""
    from llamatool.chat import ChatTemplate
    from llamatool.run import chat_prompt_ids

    model = Model.load(default_model, n_ctx=512)
    template = ChatTemplate.from_gguf(model.reader)
    ids = chat_prompt_ids(template, model.tokenizer, [{"role": "user", "content": "Say hello in one word."}])
    result = model.generate(ids, max_tokens=64, temperature=0)
    assert result.stop_reason == "eog" and "<|im_end|>" not in result.text and result.text.strip()


def test_warmup_reports_its_time_and_saves_native_kernels():
    from llamatool.quants import native

    checked = ("Q4_0", "Q8_0", "Q4_K", "Q6_K", "IQ4_XS")
    for name in checked:  # earlier tests may have saved them: warmup must save them again
        for verb in ("quantize", "dequantize"):
            (native._folder() / f"{verb}_{name.lower()}.o").unlink(missing_ok=True)
    proc = llamatool("warmup", "-t", 2, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    assert "warmup done in" in proc.stderr and proc.stdout == ""
    # later runs load these without compiling (or, for quantize, without importing Numba)
    from llamatool import host
    from llamatool.kernels import matmul
    from llamatool.kernels.types import SUPPORTED

    saved = native.cached_addresses(matmul._PACKAGE_DIR, [f"{v}_{t}" for t in SUPPORTED for v in ("rows", "dequant")])
    assert bool(saved) == host.saved_code()  # where saved code is off, warmup fills Numba's cache only
    for name in checked:
        for verb in ("quantize", "dequantize"):
            assert (native._folder() / f"{verb}_{name.lower()}.o").exists() == host.saved_code(), (verb, name)
