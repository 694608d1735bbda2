#!/usr/bin/env python3
"""Which quantization should I use? Size, quality and speed of each preset, side by side.

For one source model and a list of presets: quantize the source to each preset (from a
float reference made once), then measure for every result its file size and bits per
weight, its perplexity on a text, its KL divergence from the reference (mean KLD and how
often the top token agrees, as llama-perplexity --kl-divergence reports them) and its
prompt-processing and generation speed (as llama-bench measures them). Prints a table,
writes it as Markdown and JSON, and draws size against KLD as a PNG (needs matplotlib).

    python scripts/quant_report.py                                  # default model, default presets
    python scripts/quant_report.py -m model.gguf --presets Q8_0,Q4_K_M,Q4_0 --chunks 4 -o out/

When the source is itself quantized (like the default Q4_1 model), the reference is its
dequantized F32 copy: every preset is then measured against that, which is what matters
when choosing among re-quantizations of the same weights.

With --imatrix FILE (from `llamatool imatrix`, made on the reference or the source) every
preset is quantized twice, without and with the importance matrix, and both rows are shown
(the second as "PRESET+imatrix"); the plot marks them apart. Calibrate on another text than
the one scored, or the gain is overstated.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from llamatool.quant_rules import LOW_BIT_PRESETS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TEXT = ROOT / "tests" / "data" / "shakespeare-sonnets.txt"
DEFAULT_PRESETS = "Q8_0,Q6_K,Q5_K_M,Q5_0,Q4_K_M,Q4_1,Q4_0,Q3_K_M,Q2_K"


IMATRIX_TAG = "+imatrix"


def quantize(src: Path, dst: Path, preset: str, args, imatrix: Path | None = None) -> None:
    """Through the command line, exactly as a user would run it."""
    if args.reuse and dst.exists():
        return
    cmd = [sys.executable, "-m", "llamatool", "quantize", str(src), str(dst), preset, "--allow-requantize", "--force"]
    if imatrix is not None:
        cmd += ["--imatrix", str(imatrix)]
    cmd += ["--nthreads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"quantize {preset} failed: {proc.stderr.strip()}")


def measure_speed(path: Path, args) -> dict:
    from llamatool.bench import plan_tests, run_benchmarks

    if args.no_speed:
        return {}
    tests = plan_tests([path], [args.pp], [args.tg], [], [args.threads])
    return {r.test.name: {"avg_ts": r.avg_ts, "stddev_ts": r.stddev_ts} for r in run_benchmarks(tests, reps=args.reps)}


def size_figures(path: Path) -> dict:
    from llamatool.bench import model_description
    from llamatool.gguf_io import GGUFReader

    _, tensor_bytes, n_params = model_description(GGUFReader(path))
    return {"file_bytes": path.stat().st_size, "bits_per_weight": 8 * tensor_bytes / n_params}


def measure(path: Path, base_file: Path, args) -> dict:
    """One pass over the base file's tokens gives both the PPL and the KLD figures."""
    from llamatool.model import Model
    from llamatool.perplexity import LogitsFile, kl_divergence

    base = LogitsFile.open(base_file)
    model = Model.load(path, n_ctx=base.n_ctx, n_threads=args.threads)
    stats = kl_divergence(model, base)
    del model
    (ppl, ppl_error), (kld, kld_error) = stats.ppl(), stats.kld()
    return {
        **size_figures(path),
        "ppl": ppl,
        "ppl_error": ppl_error,
        "kld": kld,
        "kld_error": kld_error,
        "same_top": stats.same_top()[0],
        "delta_ppl": stats.ppl_diff()[0],
        "speed": measure_speed(path, args),
    }


def measure_reference(reference: Path, base_file: Path, text: str, args) -> dict:
    """Write the KLD base file (atomically: a half-written one must never be reused)."""
    from llamatool.fileio import atomic_output
    from llamatool.model import Model
    from llamatool.perplexity import perplexity, tokenize_text

    model = Model.load(reference, n_ctx=args.ctx_size, n_threads=args.threads)
    with atomic_output(base_file, force=True) as f:
        result = perplexity(model, tokenize_text(model, text), n_ctx=args.ctx_size, n_chunks=args.chunks, logits_out=f)
    del model
    return {
        **size_figures(reference),
        "ppl": result.ppl,
        "ppl_error": result.ppl_error,
        "kld": 0.0,
        "kld_error": 0.0,
        "same_top": 1.0,
        "delta_ppl": 0.0,
        "speed": measure_speed(reference, args),
    }


def markdown(rows: list[dict], pp: str, tg: str) -> str:
    head = "| preset | size (MiB) | bpw | PPL | ΔPPL | mean KLD | same top | " + f"{pp} t/s | {tg} t/s |"
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        s = r["speed"]
        fmt = lambda k: f"{s[k]['avg_ts']:.1f} ± {s[k]['stddev_ts']:.1f}" if k in s else "-"  # noqa: E731
        lines.append(
            f"| {r['preset']} | {r['file_bytes'] / 2**20:.1f} | {r['bits_per_weight']:.2f} | "
            f"{r['ppl']:.3f} ± {r['ppl_error']:.3f} | {r['delta_ppl']:+.3f} | {r['kld']:.5f} | "
            f"{100 * r['same_top']:.1f}% | {fmt(pp)} | {fmt(tg)} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install matplotlib)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    pts = [r for r in rows if r["kld"] > 0]
    for weighted, label in ((False, "without imatrix"), (True, "with imatrix")):
        sel = [r for r in pts if r["preset"].endswith(IMATRIX_TAG) == weighted]
        if sel:
            ax.scatter([r["file_bytes"] / 2**20 for r in sel], [r["kld"] for r in sel], label=label, marker="o" if not weighted else "^")
    if any(r["preset"].endswith(IMATRIX_TAG) for r in pts):
        ax.legend()
    for r in pts:
        ax.annotate(r["preset"], (r["file_bytes"] / 2**20, r["kld"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KL divergence from the reference (log scale)")
    ax.set_yscale("log")
    ax.margins(x=0.1, y=0.15)  # room for the labels of the outermost points
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def render(rows: list[dict], args, console) -> None:
    """The table on stdout; report.md, report.json and size_vs_kld.png in OUTDIR."""
    from rich.console import Console
    from rich.table import Table

    pp, tg = f"pp{args.pp}", f"tg{args.tg}"
    table = Table(title=f"{args.model.name}: {args.chunks} chunks of {args.ctx_size} tokens of {args.file.name}")
    for col in ("preset", "size MiB", "bpw", "PPL", "ΔPPL", "mean KLD", "same top", f"{pp} t/s", f"{tg} t/s"):
        table.add_column(col, justify="left" if col == "preset" else "right")
    for r in rows:
        s = r["speed"]
        table.add_row(
            r["preset"],
            f"{r['file_bytes'] / 2**20:.1f}",
            f"{r['bits_per_weight']:.2f}",
            f"{r['ppl']:.3f} ± {r['ppl_error']:.3f}",
            f"{r['delta_ppl']:+.3f}",
            f"{r['kld']:.5f}",
            f"{100 * r['same_top']:.1f}%",
            f"{s[pp]['avg_ts']:.1f}" if pp in s else "-",
            f"{s[tg]['avg_ts']:.1f}" if tg in s else "-",
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    (args.outdir / "report.md").write_text(markdown(rows, pp, tg))
    (args.outdir / "report.json").write_text(json.dumps(rows, indent=2))
    title = f"{args.model.name}: size vs quality\nmean KLD from {rows[0]['preset']}, {args.chunks} x {args.ctx_size} tokens of {args.file.name}"
    if plot(rows, args.outdir / "size_vs_kld.png", title):
        console.print(f"plot: {args.outdir / 'size_vs_kld.png'}")
    console.print(f"tables: {args.outdir / 'report.md'}, {args.outdir / 'report.json'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("-f", "--file", type=Path, default=DEFAULT_TEXT, help="text for perplexity and KLD")
    p.add_argument("--presets", default=DEFAULT_PRESETS)
    p.add_argument("-o", "--outdir", type=Path, default=ROOT / "models" / "quant-report")
    p.add_argument("-c", "--ctx-size", type=int, default=512)
    p.add_argument("--chunks", type=int, default=8, help="chunks of text to score (-1: all)")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("--pp", type=int, default=512)
    p.add_argument("--tg", type=int, default=128)
    p.add_argument("-r", "--reps", type=int, default=3)
    p.add_argument("--no-speed", action="store_true", help="skip the speed columns")
    p.add_argument("--reuse", action="store_true", help="keep model files already in OUTDIR instead of quantizing again")
    p.add_argument("--from-json", type=Path, help="render the table and plot of an earlier report.json (same -m/-f/-c/--chunks)")
    p.add_argument("--imatrix", type=Path, help="also quantize every preset with this importance matrix (two rows per preset)")
    args = p.parse_args()

    from rich.console import Console

    console = Console(stderr=True)
    args.outdir.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        render(json.loads(args.from_json.read_text()), args, console)
        return
    text = args.file.read_text(encoding="utf-8")
    stem = args.model.name.removesuffix(".gguf")
    reference = args.outdir / f"{stem}.F32.gguf"
    console.print(f"reference: {reference}")
    quantize(args.model, reference, "F32", args)
    # The base file is always recomputed: it depends on the text, -c and --chunks.
    base_file = args.outdir / f"{stem}.F32.kld"
    t0 = time.perf_counter()
    rows = [{"preset": "F32 (reference)", **measure_reference(reference, base_file, text, args)}]
    console.print(f"reference measured in {time.perf_counter() - t0:.1f} s")

    for preset in [s.strip().upper() for s in args.presets.split(",") if s.strip()]:
        for imatrix in (None, args.imatrix) if args.imatrix else (None,):
            if imatrix is None and args.imatrix and preset in LOW_BIT_PRESETS:
                console.print(f"{preset}: made only with the imatrix (llama-quantize refuses it without)")
                continue
            name = preset + (IMATRIX_TAG if imatrix else "")
            out = args.outdir / f"{stem}.{name}.gguf"
            t0 = time.perf_counter()
            quantize(reference, out, preset, args, imatrix)
            console.print(f"{name}: quantized in {time.perf_counter() - t0:.1f} s, measuring ...")
            rows.append({"preset": name, **measure(out, base_file, args)})

    render(rows, args, console)

if __name__ == "__main__":
    main()
