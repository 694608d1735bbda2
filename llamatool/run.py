"""`llamatool run`: generate text or chat with a GGUF model, like llama-cli.

Scriptable by design: stdout carries only text (the prompt, unless --no-display-prompt,
then the generation, streamed as it is made); logs and timings go to stderr. Without
--chat it never reads stdin (except `-f -`). With --chat it holds a conversation through
the model's chat template, keeping the history in the KV cache: each turn only the new
tokens are evaluated. Lines come from the terminal (`/exit` or Ctrl-D to leave, Ctrl-C to
stop a reply) or, when stdin is a pipe, one user message per line until the end of input.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import LlamatoolError
from .sampling import SamplingParams

EXIT_COMMANDS = ("/exit", "/quit", "/bye")


@dataclass
class RunOptions:
    model: Path
    prompt: str | None = None
    file: str | None = None
    n_predict: int = -1
    ctx_size: int = 4096
    threads: int | None = None
    batch_size: int = 512
    sampling: SamplingParams = SamplingParams()
    chat: bool = False
    system_prompt: str | None = None
    display_prompt: bool = True
    ignore_eos: bool = False
    lora: tuple = ()  # LoRA adapters: (path, scale) pairs


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_command(opts: RunOptions) -> None:
    prompt = _read_prompt(opts)
    if prompt is None and not opts.chat:
        raise LlamatoolError("nothing to do: give a prompt with -p/--prompt or -f/--file, or chat with --chat")
    sampling = opts.sampling
    if sampling.seed is None:
        sampling = SamplingParams(**{**sampling.__dict__, "seed": random.randrange(2**32)})
    sampling.check()
    model = _load(opts)
    log(f"sampling: temp {sampling.temperature}, top-k {sampling.top_k}, top-p {sampling.top_p}, "
        f"min-p {sampling.min_p}, repeat-penalty {sampling.repeat_penalty} (last {sampling.repeat_last_n}), seed {sampling.seed}")
    if opts.chat:
        _chat(model, opts, sampling, prompt)
    else:
        _complete(model, opts, sampling, prompt)


def _read_prompt(opts: RunOptions) -> str | None:
    if opts.prompt is not None and opts.file is not None:
        raise LlamatoolError("give the prompt with -p or -f, not both")
    if opts.file is None:
        return opts.prompt
    if opts.file == "-":
        return sys.stdin.read()
    path = Path(opts.file)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LlamatoolError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise LlamatoolError(f"{path}: cannot read the prompt ({e.__class__.__name__})") from None


def _load(opts: RunOptions):
    from .model import Model

    model = Model.load(opts.model, n_ctx=opts.ctx_size, n_threads=opts.threads, n_batch=opts.batch_size, lora=opts.lora)
    a = model.args
    log(f"loaded {model.path.name}: {a.name or a.architecture}, {a.n_layer} layers, n_embd {a.n_embd}, "
        f"vocab {a.n_vocab}, context {model.n_ctx} (trained {a.n_ctx_train}), {model.n_threads} threads, "
        f"KV cache {model.kv_cache_bytes / 2**20:.0f} MiB, in {model.load_seconds * 1000:.0f} ms")
    return model


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _complete(model, opts: RunOptions, sampling: SamplingParams, prompt: str) -> None:
    from .generate import Generation

    gen = Generation(model, prompt, max_tokens=opts.n_predict, on_text=_write, stop_at_eog=not opts.ignore_eos,
                     **sampling.__dict__)
    if opts.display_prompt:
        _write(prompt)
    try:
        for _ in gen:
            pass
    except KeyboardInterrupt:
        log("\ninterrupted")
    if sys.stdout.isatty():
        _write("\n")
    if gen.result is not None:
        print_timings(gen.result.timings, sys.stderr)


def _chat(model, opts: RunOptions, sampling: SamplingParams, first_message: str | None) -> None:
    from .chat import ChatTemplate
    from .generate import Generation
    from .sampling import Sampler

    template = ChatTemplate.from_gguf(model.reader)
    log(f"chat template: {template.name}; /exit or Ctrl-D to leave, Ctrl-C to stop a reply")
    messages = [{"role": "system", "content": opts.system_prompt}] if opts.system_prompt else []
    sampler = Sampler(sampling)  # one generator for the whole conversation: reproducible with --seed
    interactive = sys.stdin.isatty()
    totals = None
    while True:
        user = first_message if first_message is not None else _read_user_line(interactive)
        first_message = None
        if user is None or user.strip() in EXIT_COMMANDS:
            break
        if not user.strip():
            continue
        messages.append({"role": "user", "content": user})
        ids = chat_prompt_ids(template, model.tokenizer, messages)
        gen = Generation(model, ids, max_tokens=opts.n_predict, on_text=_write, stop_at_eog=not opts.ignore_eos,
                         sampler=sampler)
        try:
            for _ in gen:
                pass
        except KeyboardInterrupt:
            log("\n[reply interrupted]")
        _write("\n")
        if gen.result is None:
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": gen.result.text})
        totals = _accumulate(totals, gen.result.timings)
        if gen.result.stop_reason == "context":
            log(f"context is full ({model.n_ctx} tokens): ending the chat (use -c to enlarge it)")
            break
    if totals is not None:
        print_timings(totals, sys.stderr)


def chat_prompt_ids(template, tokenizer, messages: list[dict]) -> list[int]:
    """The conversation as tokens, ready for the assistant's turn. A template that writes the
    BOS text itself does not get a second BOS from the tokenizer."""
    text = template.render(messages, add_generation_prompt=True)
    return tokenizer.encode(text, add_special=not template.starts_with_bos(text), parse_special=True)


def _read_user_line(interactive: bool) -> str | None:
    if interactive:
        try:
            return input("\n> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stdout)
            return None
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


def _accumulate(total, t):
    if total is None:
        return t
    total.prompt_tokens += t.prompt_tokens
    total.prompt_s += t.prompt_s
    total.generated_tokens += t.generated_tokens
    total.eval_tokens += t.eval_tokens
    total.eval_s += t.eval_s
    total.sample_s += t.sample_s
    return total


def print_timings(t, out) -> None:
    """Timings in the shape of llama.cpp's llama_perf_context_print."""

    def line(label: str, ms: float, n: int, unit: str) -> str:
        per = f"({ms / n:8.2f} ms per {unit[:-1] if unit.endswith('s') else unit}, {1000 * n / ms:8.2f} {unit} per second)" if n and ms else ""
        return f"{label:>18} = {ms:10.2f} ms / {n:5d} {unit:6} {per}"

    total_ms = 1000 * (t.prompt_s + t.eval_s + t.sample_s)
    print(file=out)
    print(f"{'load time':>18} = {1000 * t.load_s:10.2f} ms", file=out)
    print(line("prompt eval time", 1000 * t.prompt_s, t.prompt_tokens, "tokens"), file=out)
    print(line("eval time", 1000 * t.eval_s, t.eval_tokens, "runs"), file=out)
    print(line("sampling time", 1000 * t.sample_s, t.generated_tokens, "runs"), file=out)
    print(f"{'total time':>18} = {total_ms:10.2f} ms / {t.prompt_tokens + t.eval_tokens:5d} tokens", file=out)
    out.flush()
