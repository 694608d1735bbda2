"""The `llamatool` command line: parses options and calls the module of each command.

Every command imports its module inside the function, so `llamatool --help` and
light commands like `info` never pay for numba or the kernels.
"""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from .cli_values import install as _install_plain_option_values

_install_plain_option_values()  # typer without pydantic for plain option values: ~0.2 s sooner

app = typer.Typer(
    name="llamatool",
    help="LLaMA-family models on the CPU, the llama.cpp way: convert, quantize, run, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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


# --- convert (llamatool/convert/) ------------------------------------------------------


@app.command()
def convert(
    model_dir: Path = typer.Argument(..., help="Folder of a Hugging Face checkpoint (config.json, safetensors, tokenizer)."),
    outtype: str = typer.Option(
        "auto", "--outtype", help="f32, f16, bf16, q8_0, auto (f16 or bf16 from the weights) or a quantize preset such as q4_k_m."
    ),
    outfile: Optional[Path] = typer.Option(
        None, "--outfile", help="Output file ({ftype} is replaced by the type) or folder. Default: a name from the model name, size and type, in the model folder."
    ),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Model name for general.name (default: from the model card, config or folder)."),
    vocab_only: bool = typer.Option(False, "--vocab-only", help="Write only the metadata and tokenizer, no tensors."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (tensors, types, output size) and write nothing."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output file if it exists."),
) -> None:
    """Convert a Hugging Face checkpoint folder to GGUF (like convert_hf_to_gguf.py)."""
    from .convert import ConvertOptions, run_convert_command

    options = ConvertOptions(outtype=outtype, outfile=outfile, model_name=model_name, vocab_only=vocab_only, dry_run=dry_run, force=force)
    run_convert_command(model_dir, options)


# --- LoRA adapters (llamatool/lora/) ---------------------------------------------------


@app.command("convert-lora")
def convert_lora(
    adapter_dir: Path = typer.Argument(..., help="Folder of a PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors)."),
    base: Optional[Path] = typer.Option(None, "--base", help="The base model's Hugging Face folder (only config.json is read). Default: the adapter's base_model_name_or_path when it is a local folder."),
    outtype: str = typer.Option("f32", "--outtype", help="f32, f16, bf16, q8_0 or auto (f16 or bf16 from the weights)."),
    outfile: Optional[Path] = typer.Option(None, "--outfile", help="Output file ({ftype} is replaced by the type) or folder. Default: a name from the adapter, in its folder."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and write nothing."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output file if it exists."),
) -> None:
    """Convert a PEFT LoRA adapter to a GGUF adapter (like convert_lora_to_gguf.py)."""
    from .lora.convert import LoraConvertOptions, run_convert_lora_command

    run_convert_lora_command(adapter_dir, LoraConvertOptions(base=base, outtype=outtype, outfile=outfile, dry_run=dry_run, force=force))


# typer has no repeatable two-value option: `--lora-scaled FILE SCALE` is read from the
# arguments click leaves over (any other leftover is still a usage error)
_LORA_SCALED = {"allow_extra_args": True, "ignore_unknown_options": True}


def _lora_option():
    # str, not Path: a list of plain strings is converted without pydantic (cli_values.py)
    return typer.Option([], "--lora", metavar="FILE", help="LoRA adapter GGUF at scale 1 (repeatable); --lora-scaled FILE SCALE gives a scale (repeatable).")


def _adapters(ctx: typer.Context, lora: List[str]) -> list:
    """--lora FILE and --lora-scaled FILE SCALE as [(path, scale)]."""
    args, scaled = list(ctx.args), []
    while args:
        arg = args.pop(0)
        if arg != "--lora-scaled":
            raise typer.BadParameter(f"no such option: {arg}", ctx=ctx, param_hint=repr(arg))
        if len(args) < 2:
            raise typer.BadParameter("takes two values: FILE SCALE", ctx=ctx, param_hint="'--lora-scaled'")
        path, scale = args.pop(0), args.pop(0)
        try:
            scaled.append((Path(path), float(scale)))
        except ValueError:
            raise typer.BadParameter(f"{path} {scale}: SCALE must be a number", ctx=ctx, param_hint="'--lora-scaled'") from None
    from .lora.adapter import parse_lora_options

    return parse_lora_options(lora, scaled)


@app.command("export-lora", context_settings=_LORA_SCALED)
def export_lora(
    ctx: typer.Context,
    model: Path = typer.Option(..., "-m", "--model", help="Base model GGUF."),
    lora: List[str] = _lora_option(),
    output: Path = typer.Option(..., "-o", "--output", help="Merged model GGUF to write."),
    outtype: Optional[str] = typer.Option(None, "--outtype", help="A quantize preset (q4_k_m, q8_0, ...) for the merged model. Default: merged tensors F16 (F32 if the base's is), others copied, as llama-export-lora."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Threads for --outtype's quantization."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output file if it exists."),
) -> None:
    """Merge LoRA adapters into a base model (like llama-export-lora)."""
    from .lora.export import run_export_lora_command

    run_export_lora_command(model, _adapters(ctx, lora), output, outtype, force, threads)


# --- quantize (llamatool/quantize.py) --------------------------------------------------


@contextmanager
def _one_shot():
    """For a short command that uses neither BLAS nor cyclic garbage: numpy's OpenBLAS
    would start a thread pool whose threads spin on a core for a while (here, one of the
    two the kernels use), and the collector would walk the ~100k objects the imports make,
    some 15 ms, with nothing to free. When the command is the process's own (main()
    without argv), the process ends next: the heap is frozen, so that the interpreter's
    final collections skip those objects (its teardown otherwise takes 50-100 ms, several
    times that on a busy machine). Otherwise the collector is back on afterwards."""
    import gc
    import os

    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _process_command:
            gc.freeze()
        if collecting:
            gc.enable()


@app.command(no_args_is_help=True)
def quantize(
    args: List[str] = typer.Argument(
        ...,
        metavar="IN.gguf [OUT.gguf] TYPE [NTHREADS]",
        help="As llama-quantize: without OUT, writes ggml-model-TYPE.gguf next to IN. TYPE (any case): "
        "F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K "
        "IQ4_NL IQ4_XS TQ1_0 TQ2_0 IQ3_S IQ3_M, with --imatrix also Q2_K_S IQ2_XXS IQ2_XS IQ2_S IQ2_M IQ3_XXS "
        "IQ3_XS IQ1_S IQ1_M, the aliases Q3_K Q4_K Q5_K, or a llama_ftype number.",
    ),
    nthreads: Optional[int] = typer.Option(None, "--nthreads", "-t", help="Kernel threads (default: all cores)."),
    allow_requantize: bool = typer.Option(False, "--allow-requantize", help="Allow requantizing tensors that are already quantized (loses quality)."),
    leave_output_tensor: bool = typer.Option(False, "--leave-output-tensor", help="Leave output.weight un(re)quantized."),
    pure: bool = typer.Option(False, "--pure", help="No K-quant mixture: every quantized tensor gets TYPE's base type."),
    output_tensor_type: Optional[str] = typer.Option(None, "--output-tensor-type", metavar="GGML_TYPE", help="Type of output.weight."),
    token_embedding_type: Optional[str] = typer.Option(None, "--token-embedding-type", metavar="GGML_TYPE", help="Type of token_embd.weight."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (tensor, from, to, sizes) without writing."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite OUT if it exists."),
    imatrix: Optional[str] = typer.Option(None, "--imatrix", metavar="FILE", help="Importance matrix (llamatool/llama-imatrix, GGUF or .dat) to weight the rounding by."),
    include_weights: List[str] = typer.Option([], "--include-weights", metavar="S", help="Use the imatrix only for tensors whose name contains S (repeatable)."),
    exclude_weights: List[str] = typer.Option([], "--exclude-weights", metavar="S", help="Do not use the imatrix for tensors whose name contains S (repeatable)."),
) -> None:
    """Quantize a GGUF model to a smaller type (llama-quantize presets)."""
    with _one_shot():
        from .quantize import run_quantize_command

        run_quantize_command(
            args,
            nthreads=nthreads,
            allow_requantize=allow_requantize,
            leave_output_tensor=leave_output_tensor,
            pure=pure,
            output_tensor_type=output_tensor_type,
            token_embedding_type=token_embedding_type,
            dry_run=dry_run,
            force=force,
            imatrix=imatrix,
            include_weights=include_weights,
            exclude_weights=exclude_weights,
        )


# --- run and warmup (llamatool/run.py) -------------------------------------------------


@app.command(context_settings=_LORA_SCALED)
def run(
    ctx: typer.Context,
    model: Path = typer.Option(..., "-m", "--model", help="GGUF model file."),
    prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="Prompt to continue (in --chat: the first message)."),
    file: Optional[str] = typer.Option(None, "-f", "--file", help="Read the prompt from a file ('-' for stdin)."),
    n_predict: int = typer.Option(-1, "-n", "--n-predict", help="Tokens to generate (-1: until end of generation or a full context)."),
    ctx_size: int = typer.Option(4096, "-c", "--ctx-size", help="Context size in tokens (0: the model's trained context)."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Compute threads (default: all cores)."),
    batch_size: int = typer.Option(512, "-b", "--batch-size", help="Prompt tokens per forward pass."),
    temp: float = typer.Option(0.8, "--temp", help="Temperature; 0 = greedy."),
    top_k: int = typer.Option(40, "--top-k", help="Keep the k most likely tokens (<= 0: all)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling mass (1.0: off)."),
    min_p: float = typer.Option(0.05, "--min-p", help="Drop tokens below min-p x the best probability (0: off)."),
    repeat_penalty: float = typer.Option(1.0, "--repeat-penalty", help="Penalize repeated tokens (1.0: off)."),
    repeat_last_n: int = typer.Option(64, "--repeat-last-n", help="Tokens the penalties look back on (0: off, -1: context)."),
    presence_penalty: float = typer.Option(0.0, "--presence-penalty", help="Presence penalty (0: off)."),
    frequency_penalty: float = typer.Option(0.0, "--frequency-penalty", help="Frequency penalty (0: off)."),
    seed: int = typer.Option(-1, "-s", "--seed", help="Random seed (-1: a random one, printed on stderr)."),
    chat: bool = typer.Option(False, "--chat", "-cnv", "--conversation", help="Interactive chat through the model's chat template."),
    system_prompt: Optional[str] = typer.Option(None, "-sys", "--system-prompt", help="System message for --chat."),
    no_display_prompt: bool = typer.Option(False, "--no-display-prompt", help="Do not print the prompt before the generation."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Keep generating past end-of-generation tokens."),
    lora: List[str] = _lora_option(),
) -> None:
    """Generate text or chat with a GGUF model (like llama-cli)."""
    from .run import RunOptions, run_command
    from .sampling import SamplingParams

    sampling = SamplingParams(
        temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
        repeat_last_n=repeat_last_n, presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
        seed=None if seed < 0 else seed,
    )
    run_command(RunOptions(
        model=model, prompt=prompt, file=file, n_predict=n_predict, ctx_size=ctx_size, threads=threads,
        batch_size=batch_size, sampling=sampling, chat=chat, system_prompt=system_prompt,
        display_prompt=not no_display_prompt, ignore_eos=ignore_eos, lora=tuple(_adapters(ctx, lora)),
    ))


@app.command()
def warmup(
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Accepted and ignored: what is compiled does not depend on it."),
    jobs: Optional[int] = typer.Option(None, "-j", "--jobs", help="Compile in this many processes (default: one per core)."),
) -> None:
    """Compile and cache every Numba kernel now, so later commands start fast."""
    from .warmup import warmup_command

    warmup_command(jobs)


# --- tokenize (llamatool/tokenize_cmd.py) ----------------------------------------------


@app.command()
def tokenize(
    model: Path = typer.Option(..., "-m", "--model", help="GGUF model (only its tokenizer is read)."),
    prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="Text to tokenize."),
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="Read the text from a file."),
    stdin: bool = typer.Option(False, "--stdin", help="Read the text from standard input."),
    ids: bool = typer.Option(False, "--ids", help="Print only a list of ids, like [1, 2, 3]."),
    no_bos: bool = typer.Option(False, "--no-bos", help="Do not add BOS/EOS even if the model asks for them."),
    special: bool = typer.Option(False, "--special", help="Recognise special tokens (e.g. <|im_start|>) in the text."),
    show_count: bool = typer.Option(False, "--show-count", help="Also print the number of tokens."),
    no_escape: bool = typer.Option(False, "--no-escape", help="Take -p literally (no \\n, \\t, ... processing)."),
) -> None:
    """Turn text into token ids with a model's tokenizer (like llama-tokenize)."""
    from .tokenize_cmd import tokenize_command

    tokenize_command(model, prompt, file, stdin, ids, no_bos, special, show_count, escape=not no_escape)


# --- bench and perplexity (llamatool/bench.py, llamatool/perplexity.py) ----------------


@app.command(context_settings=_LORA_SCALED)
def bench(
    ctx: typer.Context,
    model: List[Path] = typer.Option(..., "-m", "--model", help="GGUF model; repeat for several."),
    n_prompt: str = typer.Option("512", "-p", "--n-prompt", help="Prompt lengths: 512, 128,512, 64-512*2 (0: none)."),
    n_gen: str = typer.Option("128", "-n", "--n-gen", help="Generation lengths, same syntax (0: none)."),
    pg: List[str] = typer.Option([], "-pg", help="Prompt then generation, timed together: PP,TG (repeatable)."),
    n_depth: str = typer.Option("0", "-d", "--n-depth", help="Tokens already in the KV cache before each test."),
    n_batch: str = typer.Option("2048", "-b", "--batch-size", help="Prompt tokens evaluated per call."),
    threads: Optional[str] = typer.Option(None, "-t", "--threads", help="Thread counts, e.g. 1,2 (default: all cores)."),
    reps: int = typer.Option(5, "-r", "--repetitions", help="Timed repetitions of each test."),
    output: str = typer.Option("table", "-o", "--output", help="table, md, csv, json or jsonl."),
    no_warmup: bool = typer.Option(False, "--no-warmup", help="Skip the untimed warm-up run."),
    progress: bool = typer.Option(False, "--progress", help="Print progress to stderr."),
    repack: bool = typer.Option(False, "--repack", help="Pack the matrices at load, as `serve` does."),
    lora: List[str] = _lora_option(),
) -> None:
    """Measure prompt processing and generation speed (like llama-bench)."""
    from .bench import bench_command

    bench_command(model, n_prompt, n_gen, pg, threads, reps, output, n_depth, n_batch, no_warmup, progress, _adapters(ctx, lora),
                  repack)


@app.command(context_settings=_LORA_SCALED)
def perplexity(
    ctx: typer.Context,
    model: Path = typer.Option(..., "-m", "--model", help="GGUF model."),
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="UTF-8 text to score."),
    ctx_size: int = typer.Option(512, "-c", "--ctx-size", help="Tokens per chunk."),
    chunks: int = typer.Option(-1, "--chunks", help="Score at most this many chunks (-1: all)."),
    batch_size: int = typer.Option(2048, "-b", "--batch-size", help="Tokens evaluated per call."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Threads (default: all cores)."),
    kl_divergence_base: Optional[Path] = typer.Option(
        None, "--kl-divergence-base", help="Save the log-probabilities here (or read them with --kl-divergence)."
    ),
    kl_divergence: bool = typer.Option(False, "--kl-divergence", help="Compare with --kl-divergence-base FILE."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --kl-divergence-base file."),
    lora: List[str] = _lora_option(),
) -> None:
    """Perplexity of a text, and KL divergence against a reference model (like llama-perplexity)."""
    from .perplexity import perplexity_command

    perplexity_command(model, file, ctx_size, chunks, batch_size, threads, kl_divergence_base, kl_divergence, force,
                       _adapters(ctx, lora))


# --- imatrix (llamatool/imatrix.py) ------------------------------------------------------


@app.command()
def imatrix(
    model: Optional[Path] = typer.Option(None, "-m", "--model", help="GGUF model."),
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="UTF-8 calibration text."),
    output: Path = typer.Option(Path("imatrix.gguf"), "-o", "--output", help="Where to write the importance matrix."),
    ctx_size: int = typer.Option(512, "-c", "--ctx-size", help="Tokens per chunk."),
    chunks: int = typer.Option(-1, "--chunks", help="Use at most this many chunks (-1: all)."),
    output_format: str = typer.Option("gguf", "--output-format", help="gguf, or dat (the legacy format)."),
    in_file: List[Path] = typer.Option([], "--in-file", help="Add an earlier imatrix (GGUF or .dat); repeatable."),
    process_output: bool = typer.Option(False, "--process-output", help="Also collect output.weight."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Threads (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output file if it exists."),
) -> None:
    """Collect an importance matrix for quantize --imatrix (like llama-imatrix)."""
    from .imatrix import imatrix_command

    imatrix_command(model, file, output, ctx_size, chunks, output_format, in_file, process_output, threads, force)


# --- serve (issue 16: llamatool/server/) ------------------------------------------------


@app.command(context_settings=_LORA_SCALED)
def serve(
    ctx: typer.Context,
    model: Path = typer.Option(..., "-m", "--model", help="GGUF model file."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", help="TCP port (0: any free one)."),
    ctx_size: int = typer.Option(8192, "-c", "--ctx-size", help="Context size in tokens, shared by the slots (0: the model's trained context)."),
    slots: int = typer.Option(4, "-np", "--parallel", help="Slots: requests served at once, each with ctx-size/np tokens of context."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Compute threads (default: all cores)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require this key (Authorization: Bearer KEY); default: env LLAMATOOL_API_KEY."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Model name clients see (default: the file's name)."),
    metrics: bool = typer.Option(False, "--metrics", help="Serve Prometheus metrics at GET /metrics."),
    embeddings: bool = typer.Option(False, "--embeddings", help="Serve POST /v1/embeddings."),
    repack: Optional[bool] = typer.Option(None, "--repack/--no-repack", " /-nr", help="Pack the weights at load: steps of several slots cost little more than one (default: when they grow by at most 35%: Q4_0, Q4_1, Q8_0, not the K-quant mixes)."),
    lora: List[str] = _lora_option(),
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (like llama-server)."""
    from .server import ServeOptions, serve_command

    serve_command(ServeOptions(model=model, host=host, port=port, ctx_size=ctx_size, slots=slots, threads=threads,
                               api_key=api_key, alias=alias, metrics=metrics, embeddings=embeddings,
                               repack=repack, lora=tuple(_adapters(ctx, lora))))


# --- entry point -----------------------------------------------------------------------


_process_command = False  # main() runs the process's own command line (see _one_shot)


def _terminate(signum, frame):
    # Turn SIGTERM into an exception so atomic writers remove their temporary files.
    raise SystemExit(128 + signum)


def main(argv: Optional[List[str]] = None) -> None:
    """Run the app; a LlamatoolError becomes `error: <message>` on stderr and exit code 1.

    Usage errors, --help and Ctrl-C are handled by typer/click themselves (standalone mode).
    """
    from .errors import LlamatoolError

    global _process_command
    _process_command = argv is None  # this process's command line: it ends with the command
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
