"""Write the committed reference vectors of the 1-3-bit IQ quantizers.

Runs llama.cpp's own ggml_quantize_chunk (with quantization weights, as llama-quantize
--imatrix calls it; without for the types that allow it) on tests/lowbit_cases.py's inputs
and saves the bytes to tests/data/quant_vectors_lowbit_ggml.npz. The C code comes from
llama-cpp-python's libggml-base through ctypes, or with --harness from a small program
linked against a libggml-base.a built from the same vendored source (the static library
scripts/build_llamacpp.sh leaves in its build folder):

    .venv/bin/python scripts/gen_quant_vectors_lowbit.py [--harness PATH]

The harness is `qref TYPE NROWS NPERROW x.bin qw.bin|- out.bin` (ggml_quantize_chunk on
float32 files); its 20 lines of C are in the docstring of harness_source().
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
    """The harness's C source (build: cc -I$LLAMA_CPP_SRC/ggml/include qref.c libggml-base.a -lstdc++ -fopenmp -lm)."""
    return r'''#include <stdio.h>
#include <stdlib.h>
#include "ggml.h"
int main(int argc, char **argv) {
    int type = atoi(argv[1]); long nrows = atol(argv[2]), n = atol(argv[3]);
    float *x = malloc(nrows*n*4), *qw = NULL;
    FILE *f = fopen(argv[4], "rb"); fread(x, 4, nrows*n, f); fclose(f);
    if (argv[5][0] != '-') { qw = malloc(n*4); f = fopen(argv[5], "rb"); fread(qw, 4, n, f); fclose(f); }
    size_t rs = ggml_row_size(type, n);
    void *out = calloc(nrows, rs);
    ggml_quantize_chunk(type, x, out, 0, nrows, n, qw);
    f = fopen(argv[6], "wb"); fwrite(out, 1, nrows*rs, f); fclose(f);
    return 0;
}
'''


def harness_quantize(harness: Path):
    def quantize(name: str, x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            xf, qf, of = Path(tmp, "x"), Path(tmp, "qw"), Path(tmp, "out")
            np.ascontiguousarray(x, np.float32).tofile(xf)
            if qw is not None:
                np.ascontiguousarray(qw, np.float32).tofile(qf)
            subprocess.run([str(harness), str(int(GGMLQuantizationType[name])), str(x.shape[0]), str(x.shape[1]), str(xf),
                            str(qf) if qw is not None else "-", str(of)], check=True)
            return np.fromfile(of, np.uint8).reshape(x.shape[0], -1)

    return quantize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--harness", type=Path, help="the qref program (else llama-cpp-python's libggml-base)")
    args = p.parse_args()
    if args.harness:
        quantize = harness_quantize(args.harness)
    else:
        ref = load()
        if ref is None:
            sys.exit(SKIP_REASON)
        quantize = ref.quantize
    rows, weights = lowbit_rows(), lowbit_weights()
    data = {f"x_{case}": x for case, x in rows.items()} | {f"qw_{case}": w for case, w in weights.items()}
    for name in LOWBIT_TYPES:
        for case, x in rows.items():
            for wcase, qw in weights.items():
                data[f"{name}/{case}/{wcase}"] = quantize(name, x, qw)
            if name in UNWEIGHTED_TYPES:
                data[f"{name}/{case}/none"] = quantize(name, x, None)
    np.savez_compressed(VECTORS_LOWBIT, **data)
    print(f"{VECTORS_LOWBIT}: {VECTORS_LOWBIT.stat().st_size // 1024} KiB, {len(data)} arrays")


if __name__ == "__main__":
    main()
