"""Write the committed reference vectors of the 1-3-bit IQ quantizers.

Runs llama.cpp's own ggml_quantize_chunk (with quantization weights, as llama-quantize
--imatrix calls it; without for the types that allow it) on tests/lowbit_cases.py's inputs
and saves the bytes to tests/data/quant_vectors_lowbit_ggml.npz. The C code comes from
llama-cpp-python's libggml-base through ctypes, or with --harness from a small program
linked against a libggml-base.a built from the same vendored source (the static library
scripts/build_llamacpp.sh leaves in its build folder):

    .venv/bin/python scripts/gen_quant_vectors_lowbit.py [--harness PATH]

The harness runs ggml_quantize_chunk on float32 files; its 20 lines of C are
harness_source()'s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gguf.constants import GGMLQuantizationType  # noqa: E402

from tests.lowbit_cases import LOWBIT_TYPES, UNWEIGHTED_TYPES, VECTORS_LOWBIT, lowbit_rows, lowbit_weights  # noqa: E402
from tests.quant_reference import SKIP_REASON, load  # noqa: E402


def harness_source() -> str:
    """The harness's C source (build: cc -I$LLAMA_CPP_SRC/ggml/include qref.c libggml-base.a -lstdc++ -fopenmp -lm).
    It reads jobs from stdin, one a line, `TYPE NROWS NPERROW x.bin qw.bin|- out.bin`: one
    process for all, so ggml sets up each type's grid tables once."""
    return r'''#include <stdio.h>
#include <stdlib.h>
#include "ggml.h"
int main(void) {
    int type; long nrows, n; char xf[4096], qf[4096], of[4096];
    while (scanf("%d %ld %ld %4095s %4095s %4095s", &type, &nrows, &n, xf, qf, of) == 6) {
        float *x = malloc(nrows*n*4), *qw = NULL;
        FILE *f = fopen(xf, "rb"); fread(x, 4, nrows*n, f); fclose(f);
        if (qf[0] != '-') { qw = malloc(n*4); f = fopen(qf, "rb"); fread(qw, 4, n, f); fclose(f); }
        size_t rs = ggml_row_size(type, n);
        void *out = calloc(nrows, rs);
        ggml_quantize_chunk(type, x, out, 0, nrows, n, qw);
        f = fopen(of, "wb"); fwrite(out, 1, nrows*rs, f); fclose(f);
        free(x); free(qw); free(out);
    }
    return 0;
}
'''


def harness_quantize_all(harness: Path, jobs: dict[str, tuple[str, np.ndarray, np.ndarray | None]]) -> dict[str, np.ndarray]:
    """Every job (name -> (type, x, qw)) through one run of the harness."""
    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        for i, (key, (name, x, qw)) in enumerate(jobs.items()):
            xf, qf, of = Path(tmp, f"x{i}"), Path(tmp, f"qw{i}"), Path(tmp, f"out{i}")
            np.ascontiguousarray(x, np.float32).tofile(xf)
            if qw is not None:
                np.ascontiguousarray(qw, np.float32).tofile(qf)
            lines.append(f"{int(GGMLQuantizationType[name])} {x.shape[0]} {x.shape[1]} {xf} {qf if qw is not None else '-'} {of}")
        subprocess.run([str(harness)], input="\n".join(lines) + "\n", text=True, check=True)
        return {key: np.fromfile(Path(tmp, f"out{i}"), np.uint8).reshape(x.shape[0], -1)
                for i, (key, (_, x, _)) in enumerate(jobs.items())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--harness", type=Path, help="the qref program (else llama-cpp-python's libggml-base)")
    args = p.parse_args()
    rows, weights = lowbit_rows(), lowbit_weights()
    jobs = {}
    for name in LOWBIT_TYPES:
        for case, x in rows.items():
            for wcase, qw in [*weights.items(), *([("none", None)] if name in UNWEIGHTED_TYPES else [])]:
                jobs[f"{name}/{case}/{wcase}"] = (name, x, qw)
    if args.harness:
        quantized = harness_quantize_all(args.harness, jobs)
    else:
        ref = load()
        if ref is None:
            sys.exit(SKIP_REASON)
        quantized = {key: ref.quantize(name, x, qw) for key, (name, x, qw) in jobs.items()}
    data = {f"x_{case}": x for case, x in rows.items()} | {f"qw_{case}": w for case, w in weights.items()} | quantized
    np.savez_compressed(VECTORS_LOWBIT, **data)
    print(f"{VECTORS_LOWBIT}: {VECTORS_LOWBIT.stat().st_size // 1024} KiB, {len(data)} arrays")


if __name__ == "__main__":
    main()
