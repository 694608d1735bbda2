"""llamatool.precompile: kernels compiled as jobs in worker processes (warmup, and a model
loading on a cold cache), and the forward pass compiled in a background process while a cold
process compiles its weight types."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from llamatool import host, kernel_api, precompile
from llamatool.model import Model
from llamatool.quants import native, registry

needs_saved_code = pytest.mark.skipif(not host.saved_code(), reason="saved machine code is off by design here "
                                      "(LLAMATOOL_NO_NATIVE, or not x86-64 Linux): nothing compiles in the background")


def test_warmup_jobs_cover_every_kernel():
    jobs = precompile.all_jobs()
    supported = kernel_api.load("types").SUPPORTED
    assert jobs.count("forward") == 1 and "nonfinite" in jobs
    assert {f"rows:{t}" for t in supported} <= set(jobs)
    assert {f"quant:{t.name}" for t in registry.all_types() if t.can_quantize} <= set(jobs)
    assert len(jobs) == len(set(jobs))


def test_a_failed_job_is_reported_and_the_others_still_run():
    seen = []
    results = precompile.run_jobs(["no-such-job", "nonfinite"], workers=1, report=seen.append)
    errors = {job: error for job, _, error in results}
    assert "unknown compile job 'no-such-job'" in errors["no-such-job"] and errors["nonfinite"] is None
    assert seen == results


@pytest.fixture
def fake_start(monkeypatch, tmp_path):
    """start_forward with an empty kernels folder (tmp_path) and a Popen that only records."""
    started = []

    class Child:
        def __init__(self, argv, **kw):
            started.append(argv)

        def poll(self):
            return 0

        def wait(self):
            return 0

    monkeypatch.setattr(native, "_private", lambda package=None: tmp_path)
    monkeypatch.setattr(precompile.subprocess, "Popen", Child)
    monkeypatch.setattr(precompile, "_background", [])
    monkeypatch.setattr(precompile, "_in_job", [])
    monkeypatch.setattr(precompile, "cores", lambda: 2)
    monkeypatch.delenv("LLAMATOOL_FORWARD", raising=False)
    return started, tmp_path


@needs_saved_code
def test_the_forward_pass_compiles_in_the_background_only_when_it_can_help(fake_start, monkeypatch):
    started, folder = fake_start
    assert precompile.start_forward() and started == [[sys.executable, "-m", "llamatool.precompile", "forward"]]
    assert not precompile.start_forward() and len(started) == 1  # once per process
    precompile.wait_forward()

    monkeypatch.setattr(precompile, "_background", [])
    (folder / "forward-0123456789abcdef.o").write_bytes(b"")
    assert not precompile.start_forward()  # a forward pass is saved already: nothing to gain
    (folder / "forward-0123456789abcdef.o").unlink()
    monkeypatch.setattr(precompile, "cores", lambda: 1)
    assert not precompile.start_forward()  # one core: the two would only take turns
    monkeypatch.setattr(precompile, "cores", lambda: 2)
    monkeypatch.setenv("LLAMATOOL_FORWARD", "numba")
    assert not precompile.start_forward()  # the pass will not run from saved code anyway
    monkeypatch.delenv("LLAMATOOL_FORWARD")
    monkeypatch.setattr(precompile, "_in_job", ["forward"])
    assert not precompile.start_forward()  # a job process (the forward job itself) starts nothing
    assert len(started) == 1


@needs_saved_code
def test_a_cold_run_gets_its_forward_pass_from_the_background_process(default_model, tmp_path):
    """A first run on a cold cache: the forward pass, compiled by the background process, is
    there as saved machine code when the run needs it (LLAMATOOL_FORWARD=native refuses to
    run otherwise). The weight types but one are copied in, so only that one compiles here."""
    from llamatool.kernels import matmul

    qtypes = sorted(int(t) for t in Model.load(default_model, n_ctx=64).weights.matrix_types)
    assert native.cached_addresses(matmul._PACKAGE_DIR, [f"rows_{t}" for t in qtypes])  # the model has run here
    cold = tmp_path / "cache"
    ours = native._folder(kernel_api.KERNELS)
    theirs = cold / ours.relative_to(native.cache_dir())
    theirs.mkdir(parents=True)
    for t in qtypes[1:]:
        for verb in ("rows", "dequant"):
            shutil.copy2(ours / f"{verb}_{t}.o", theirs / f"{verb}_{t}.o")
    os.chmod(cold, 0o700)
    env = {**os.environ, "LLAMATOOL_CACHE_DIR": str(cold), "LLAMATOOL_FORWARD": "native"}
    env.pop("NUMBA_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "llamatool", "run", "-m", str(default_model), "-p", "Hello", "-n", "2",
                           "--temp", "0", "-c", "64"], capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Hello")
    assert list(theirs.glob("forward-*.o")) and (theirs / f"rows_{qtypes[0]}.o").exists()


def test_jobs_compile_apart_only_where_their_code_can_be_saved(monkeypatch, tmp_path):
    """compile_apart: workers only when the machine code they make can be loaded from the cache
    afterwards (a read-only or refused folder would have the kernels compiled twice)."""
    ran = []
    monkeypatch.setattr(precompile, "run_jobs", lambda jobs, apart=False: ran.append((jobs, apart)))
    monkeypatch.setattr(precompile, "_in_job", [])
    monkeypatch.setattr(native, "_private", lambda package=None: tmp_path)
    precompile.compile_apart(["rows:2"])
    assert ran == [(["rows:2"], True)]
    precompile.compile_apart([])
    monkeypatch.setattr(precompile, "_in_job", ["rows:8"])
    precompile.compile_apart(["rows:2"])  # a job process compiles its own job
    monkeypatch.setattr(precompile, "_in_job", [])
    tmp_path.chmod(0o500)
    try:
        if not os.access(tmp_path, os.W_OK):  # (root writes anywhere)
            precompile.compile_apart(["rows:2"])
    finally:
        tmp_path.chmod(0o700)
    monkeypatch.setattr(native, "_private", lambda package=None: None)  # saved code off or the folder refused
    precompile.compile_apart(["rows:2"])
    assert len(ran) == 1


@needs_saved_code
def test_a_cold_load_compiles_apart_and_keeps_no_compiler(default_model, tmp_path):
    """A repacked model (a server's) loading on a cold cache: the kernels it lacks (here one
    weight type's matmul kernels, its panel packer and every packed product) compile in
    worker processes (precompile.compile_apart), so the loading process never imports Numba
    and keeps none of the compiler's memory; its tokens are those of a warm load."""
    from llamatool.kernels import matmul

    warm = Model.load(default_model, n_ctx=64, repack=True)
    qtypes = sorted(int(t) for t in warm.weights.matrix_types)
    expected = warm.eval([1, 2, 3])
    ours = native._folder(kernel_api.KERNELS)
    assert native.cached_addresses(matmul._PACKAGE_DIR, [f"rows_{t}" for t in qtypes])
    cold = tmp_path / "cache"
    missing = ("packed_rows", f"rows_{qtypes[0]}.", f"dequant_{qtypes[0]}.", f"pack_{qtypes[0]}.")
    shutil.copytree(ours.parent, cold / "native",  # every saved object (the loader's own too) but the missing
                    ignore=lambda folder, names: [n for n in names if folder == str(ours) and n.startswith(missing)])
    theirs = cold / "native" / ours.name
    os.chmod(cold, 0o700)
    script = ("import sys, numpy as np\n"
              "from llamatool.model import Model\n"
              "m = Model.load(sys.argv[1], n_ctx=64, repack=True)\n"
              "np.save(sys.argv[2], m.eval([1, 2, 3]))\n"
              "print(m.forward_backend, 'numba' in sys.modules, 'llvmlite' in sys.modules)\n")
    env = {**os.environ, "LLAMATOOL_CACHE_DIR": str(cold)}
    env.pop("NUMBA_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", script, str(default_model), str(tmp_path / "logits.npy")],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["native", "False", "False"]
    assert (theirs / f"rows_{qtypes[0]}.o").exists() and (theirs / f"pack_{qtypes[0]}.o").exists()
    assert list(theirs.glob("packed_rows*.o"))
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), expected)


def test_modules_without_reference_counts_skip_numbas_cheap_pipeline(monkeypatch):
    """jit._optimize_final_module: the refcount-pruning pipeline runs only for modules that
    call NRT functions (the quantizers' arrays), not for the kernels compiled with _nrt=False."""
    from llamatool import jit

    calls = []
    monkeypatch.setattr(jit, "_numba_optimize_final_module", lambda library: calls.append(library.name))

    @jit.njit(_nrt=False)
    def plain(x):
        return x + 1

    @jit.njit
    def allocates(n):
        return np.zeros(n).size

    assert plain(1) == 2 and allocates(3) == 3
    assert not [name for name in calls if "plain" in name] and [name for name in calls if "allocates" in name]


def test_forceinline_helpers_have_no_python_entry():
    """jit.njit(forceinline=True): the helper is compiled into its callers without the CPython
    wrapper Numba would otherwise lower, optimize and emit for it; a call from Python is a
    clear TypeError (not a jump through a null pointer)."""
    import pytest

    from llamatool import jit

    @jit.njit(forceinline=True)
    def helper(x):
        return x * 3

    @jit.njit
    def kernel(x):
        return helper(x) + 1

    assert kernel(2) == 7
    (cres,) = helper.overloads.values()
    assert cres.library.get_pointer_to_function(cres.fndesc.llvm_cpython_wrapper_name) == 0
    (outer,) = kernel.overloads.values()
    assert outer.library.get_pointer_to_function(outer.fndesc.llvm_cpython_wrapper_name) != 0
    with pytest.raises(TypeError, match="no Python entry"):
        helper(2)
    # nor machine code of its own: its library is only linked into (and inlined by) its callers
    assert cres.library.link_only and not outer.library.link_only
    assert not cres.library._codegen._engine.is_symbol_defined(cres.fndesc.llvm_func_name)


_CACHED_HELPER = """
from llamatool import jit

@jit.njit(cache=True, forceinline=True)
def helper(x):
    return x * 3

@jit.njit(cache=True)
def first(x):
    return helper(x) + 1

@jit.njit(cache=True)
def second(x):
    return helper(x) - 1
"""


def cached_helper_module(tmp_path) -> dict:
    """Writes _CACHED_HELPER as tmp_path/cached_helper.py; the environment of a process that
    imports it with a cache of its own in tmp_path/cache."""
    (tmp_path / "cached_helper.py").write_text(_CACHED_HELPER)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}  # set by this process's llamatool.jit
    env.update(LLAMATOOL_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(tmp_path))
    return env


def test_a_link_only_helper_is_cached_and_linked_from_the_cache(tmp_path):
    """A compiled-only helper is cached as IR to link (no machine code): a later process
    compiling another caller of it loads it from the cache and links it."""
    env = cached_helper_module(tmp_path)

    def run(code):
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert run("import cached_helper as m; print(m.first(2))") == ["7"]
    hits = "m.second(5), m.first(2), sum(m.helper.stats.cache_hits.values()), sum(m.first.stats.cache_hits.values())"
    assert run(f"import cached_helper as m; print({hits})") == ["14", "7", "1", "1"]


def test_inlined_ir_copies_the_scope_once_per_copy(monkeypatch):
    """inline="always": Numba copies the callee's IR block by block (twice per call site); each
    block's copy used to copy the whole scope (every variable) again, quadratic in the callee's
    size. jit._BlockCopier shares one memo between the blocks of a copy: one scope per copy,
    and the inlined function still computes what it did."""
    from numba.core import inline_closurecall

    from llamatool import jit

    assert isinstance(inline_closurecall.copy, jit._BlockCopier)
    scopes, blocks = set(), []
    share = inline_closurecall.copy.deepcopy

    def record(block, memo=None):
        copied = share(block, memo)
        blocks.append(copied)
        scopes.add(id(copied.scope))
        return copied

    monkeypatch.setattr(inline_closurecall.copy, "deepcopy", record)

    @jit.njit(inline="always")
    def branchy(x):
        total = 0
        for i in range(x):
            if i % 3 == 0:
                total += i
            elif i % 3 == 1:
                total -= 1
            else:
                total *= 2
        return total

    @jit.njit
    def caller(x):
        return branchy(x) + branchy(x + 1)

    expected = branchy.py_func(10) + branchy.py_func(11)
    assert caller(10) == expected
    copies = 2 * 2  # two call sites, two copies each
    assert len(blocks) >= copies * 5 and len(scopes) == copies
