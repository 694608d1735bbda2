"""Compiling kernels in worker processes, so a cold cache fills on every core.

Numba compiles one function at a time, on one core, under a lock held by the whole process;
yet what a cold cache needs splits into independent jobs, each of which leaves its machine
code in the cache folder for every later process:

    forward       the forward pass, compiled on warmup's trial model and saved as machine
                  code (its argument layout is every llama model's, so one object serves all)
    rows:ID       the matmul and dequantization kernels of ggml type ID (kernels/matmul.py)
    pack:ID       the panel packer of ggml type ID (a repacked model's: a server's)
    packed:KIND   the product of panels of a gemm.packed_kind (by AMX tiles where the host
                  has them)
    quant:NAME    the quantize and dequantize kernels of a registry type (quants/native.py)
    nonfinite     `llamatool quantize`'s non-finite counter

`run_jobs` shares jobs between worker processes (each takes the next when it is done, the
longest first), for `llamatool warmup` and for a model that loads on a cold cache
(`compile_apart`): its kernels and the forward pass compile in workers, and the compiler's
memory (some 250 MiB, which Numba and LLVM never give back) leaves with them instead of
staying for the life of a server. `start_forward`, for kernels that still compile in the
caller, compiles the forward pass in one background process meanwhile: a first `run` then
takes about as long as the larger of the two instead of their sum. Numba's cache files are
replaced atomically, so two processes writing one cannot damage it; at worst one of two
entries written at the same moment is lost and compiled again when it is next needed.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

from . import host, kernel_api

# rough CPU seconds of each kind of job, measured on a 2-core machine (only their order matters: longest first)
_COST = {"forward": 16.0, "rows": 8.0, "rows-float": 1.0, "packed": 2.5, "pack": 1.0, "quant": 2.0, "nonfinite": 0.5}


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- the jobs ---------------------------------------------------------------------------------


def all_jobs() -> list[str]:
    """Every job `llamatool warmup` runs."""
    from .quants import registry

    matmul_types = kernel_api.load("types").SUPPORTED
    quant = [f"quant:{t.name}" for t in registry.all_types() if t.can_quantize or t.can_dequantize]
    return ["forward", *(f"rows:{t}" for t in matmul_types), *quant, "nonfinite"]


def cost(job: str) -> float:
    kind, _, arg = job.partition(":")
    if kind == "rows":
        float_types = kernel_api.load("types").FLOAT_TYPES
        return _COST["rows-float" if int(arg) in float_types else "rows"]
    return _COST.get(kind, 1.0)  # an unknown job fails when it runs, with its own message


_in_job: list[str] = []  # set in a process that runs jobs: it starts no background job of its own


def run_job(job: str) -> tuple[str, float, str | None]:
    """Do one job in this process: (job, CPU seconds, None or why it failed)."""
    _in_job.append(job)
    start = time.process_time()
    try:
        _do(job)
        error = None
    except Exception as e:  # noqa: BLE001 - reported by the caller, which goes on with the others
        error = f"{type(e).__name__}: {e}"
    return job, time.process_time() - start, error


def _do(job: str) -> None:
    kind, _, arg = job.partition(":")
    if kind == "forward":
        from .warmup import compile_forward

        seconds, saved = compile_forward(1)
        if not saved and host.saved_code():
            raise RuntimeError("the forward pass's machine code could not be saved")
    elif kind == "rows":
        from .kernels.matmul import kernel_tables

        kernel_tables([int(arg)])
    elif kind == "pack":
        from .kernels.matmul import packer_address

        packer_address(int(arg))
    elif kind == "packed":
        from .kernels.matmul import packed_table

        packed_table([int(arg)])
    elif kind == "quant":
        from .warmup import compile_quantizer

        compile_quantizer(arg)
    elif kind == "nonfinite":
        from .quants import native

        native.nonfinite_counter()
    else:
        raise ValueError(f"unknown compile job {job!r}")


# --- sharing jobs between processes --------------------------------------------------------------


def run_jobs(jobs: list[str], workers: int | None = None, report=None,
             apart: bool = False) -> list[tuple[str, float, str | None]]:
    """Run jobs in `workers` processes (default: one per core), the longest first; call
    report(result) as each finishes. Returns the results in the order they finished. One
    worker runs the jobs here, unless apart."""
    jobs = sorted(jobs, key=cost, reverse=True)
    workers = max(1, min(workers or cores(), len(jobs)))
    results = []
    if workers == 1 and not apart:  # no process to start: the jobs run here
        for job in jobs:
            results.append(run_job(job))
            if report:
                report(results[-1])
        return results
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        for future in as_completed([pool.submit(run_job, job) for job in jobs]):
            results.append(future.result())
            if report:
                report(results[-1])
    return results


def compile_apart(jobs: list[str]) -> None:
    """Run jobs in worker processes, even on one core (see the module docstring), when their
    machine code can be saved for this process to load: saved machine code is on here, the
    kernels' cache folder takes it, and this process is not a job itself. A job that fails
    leaves its kernel to compile in the caller when first needed, as it would have anyway."""
    if jobs and not _in_job and _saved_folder() is not None:
        try:
            run_jobs(jobs, apart=True)
        except Exception:  # noqa: BLE001 - a worker that died (BrokenProcessPool): the caller compiles
            pass


def forward_saved() -> bool:
    """Whether the kernels' cache folder holds a forward pass (or cannot take one)."""
    folder = _saved_folder()
    return folder is None or any(folder.glob("forward-*.o"))


def _saved_folder():
    """The kernels' cache folder if machine code can be saved there, else None."""
    from .quants import native

    folder = native._private(kernel_api.KERNELS)  # None where saved code is off (host.saved_code)
    return folder if folder is not None and os.access(folder, os.W_OK) else None


# --- the forward pass in the background -------------------------------------------------------------

_background: list[subprocess.Popen] = []


def start_forward() -> bool:
    """Start compiling the forward pass in a background process (see the module docstring)
    when that can help: saved machine code is on here, this process may use two cores or
    more, and the kernels' cache folder holds no forward pass yet. True when started."""
    if _background or _in_job or not host.saved_code() or cores() < 2 or os.environ.get("LLAMATOOL_FORWARD") == "numba":
        return False
    if forward_saved():
        return False
    child = subprocess.Popen([sys.executable, "-m", "llamatool.precompile", "forward"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _background.append(child)
    atexit.register(_stop, child)
    return True


def wait_forward() -> None:
    """Wait for the background forward pass, if one was started (its result is in the cache,
    or, if it failed, the caller compiles the pass itself as it would have anyway)."""
    for child in _background:
        child.wait()


def _stop(child: subprocess.Popen) -> None:
    """At exit: a compilation nobody waited for is not needed by this process."""
    if child.poll() is None:
        child.terminate()
        child.wait()


def main(argv: list[str]) -> int:
    """python -m llamatool.precompile JOB...: run the jobs here, one after the other."""
    failed = [r for r in map(run_job, argv) if r[2] is not None]
    for job, _, error in failed:
        print(f"llamatool: compiling {job} failed: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
