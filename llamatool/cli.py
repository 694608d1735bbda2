"""The `llamatool` command line: parses options and calls the module of each command.

Every command imports its module inside the function, so `llamatool --help` and
light commands like `info` never pay for numba or the kernels.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    name="llamatool",
    help="LLaMA-family models on the CPU, the llama.cpp way: convert, quantize, run, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _not_built(command: str, issue: int) -> None:
    from .errors import LlamatoolError

    raise LlamatoolError(f"`llamatool {command}` is not built yet (issue #{issue})")


# --- info ------------------------------------------------------------------------------


@app.command()
def info(
    model: Path = typer.Argument(..., help="GGUF file to describe."),
    tensors: bool = typer.Option(False, "--tensors", help="Also list every tensor (name, type, shape, bytes)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables."),
) -> None:
    """Show a GGUF model: architecture, hyperparameters, tokenizer, types, size."""
    from .info import show_info

    show_info(model, tensors=tensors, as_json=as_json)


# --- convert (issue 6: llamatool/convert.py) -------------------------------------------


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def convert() -> None:
    """Convert a Hugging Face checkpoint folder to GGUF."""
    _not_built("convert", 6)


# --- quantize (issue 3: llamatool/quantize.py) -----------------------------------------


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def quantize() -> None:
    """Quantize a GGUF model to a smaller type (llama-quantize presets)."""
    _not_built("quantize", 3)


# --- run and warmup (issue 5: llamatool/run.py) ----------------------------------------


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run() -> None:
    """Generate text or chat with a GGUF model."""
    _not_built("run", 5)


# --- tokenize (issue 4: llamatool/tokenize_cmd.py) -------------------------------------


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def tokenize() -> None:
    """Turn text into token ids with a model's tokenizer (like llama-tokenize)."""
    _not_built("tokenize", 4)


# --- bench and perplexity (issue 7: llamatool/bench.py, llamatool/perplexity.py) -------


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench() -> None:
    """Measure prompt processing and generation speed (like llama-bench)."""
    _not_built("bench", 7)


# --- entry point -----------------------------------------------------------------------


def _terminate(signum, frame):
    # Turn SIGTERM into an exception so atomic writers remove their temporary files.
    raise SystemExit(128 + signum)


def main(argv: Optional[List[str]] = None) -> None:
    """Run the app; a LlamatoolError becomes `error: <message>` on stderr and exit code 1.

    Usage errors, --help and Ctrl-C are handled by typer/click themselves (standalone mode).
    """
    from .errors import LlamatoolError

    signal.signal(signal.SIGTERM, _terminate)
    try:
        app(args=argv, prog_name="llamatool")
    except LlamatoolError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:
        # stdout closed early (e.g. `| head`): not an error worth a traceback.
        sys.stderr.close()
        sys.exit(0)


if __name__ == "__main__":
    main()
