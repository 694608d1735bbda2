"""What this machine lets the kernels use: the one place that decides.

- Saved machine code (quants/native.py, native_forward.py) is loaded by elf_loader, which
  reads x86-64 ELF objects only: it is on for x86-64 Linux and off by design elsewhere
  (macOS, aarch64, ...), where Numba's own cache keeps the compiled kernels.
- CPU-specific instructions the kernels choose themselves (kernels/simd.py, quants/floats.py):
  the features LLVM reports for the host.
- AMX tiles (the products of packed panels for 8 tokens and more, kernels/amx.py): on an
  x86-64 Linux whose CPU has AMX-INT8 and whose kernel grants the process the tile data,
  unless LLAMATOOL_NO_AMX=1 (or LLAMATOOL_NO_NATIVE) says no.
- How the one-token decode of the 32-weight types walks a matrix (kernels/matmul.py): by
  the CPU's vendor, as measured (cpu_vendor).
- LLAMATOOL_NO_NATIVE=1 forces the portable paths on any machine: no saved machine code,
  no AVX-512/VNNI instructions chosen from the features, and on an x86-64 with AVX2 Numba
  compiles for x86-64-v3 (AVX2, FMA, F16C: most desktops, and what llama.cpp's
  GGML_AVX2 build targets) instead of the host CPU. Its compiled kernels are cached apart
  from the native ones (cache_flavour).

Importing this module imports neither Numba nor llvmlite (a warm `run` needs neither).
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from typing import NamedTuple

NO_NATIVE_ENV = "LLAMATOOL_NO_NATIVE"
NO_AMX_ENV = "LLAMATOOL_NO_AMX"
PORTABLE_X86_CPU = "x86-64-v3"
_PORTABLE_X86_NEEDS = ("avx2", "fma", "f16c")  # what x86-64-v3 assumes beyond SSE
_X86_64 = ("x86_64", "amd64")


def machine() -> str:
    """The machine's architecture as the OS names it (platform.machine() without importing platform)."""
    return os.uname().machine if hasattr(os, "uname") else os.environ.get("PROCESSOR_ARCHITECTURE", "")


def forced_portable() -> bool:
    """Whether LLAMATOOL_NO_NATIVE asks for the portable paths (any value but empty or 0)."""
    return os.environ.get(NO_NATIVE_ENV, "").strip() not in ("", "0")


@lru_cache(maxsize=None)
def cpuinfo() -> dict[str, str]:
    """The first processor's fields in Linux's /proc/cpuinfo ('vendor_id', 'model name',
    'flags', ...); empty where there is no such file."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            first = f.read(1 << 16).split("\n\n")[0]
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in first.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in fields}


def cpu_vendor() -> str:
    """The CPU's vendor id as Linux reports it ('GenuineIntel', 'AuthenticAMD'), '' where
    /proc/cpuinfo says none. Part of every compiled-kernel cache key already (the whole
    first processor's entry is, see quants/native._host_cpu and Numba's CPU name)."""
    return cpuinfo().get("vendor_id", "")


def saved_code() -> bool:
    """Whether machine code saved in the cache may be built and loaded here."""
    return not forced_portable() and sys.platform.startswith("linux") and machine().lower() in _X86_64


def cache_flavour() -> str:
    """Part of every compiled-kernel cache key: the portable build never shares code with the native one."""
    return "portable" if forced_portable() else "native"


class Features(NamedTuple):
    """The CPU features kernels choose their own instructions by."""

    x86: bool  # SSE2 and SSSE3's pshufb, pause, sfence (every x86-64 llamatool runs on)
    f16c: bool  # hardware half <-> float conversion
    vnni_512: bool  # vpdpbusd on 64 bytes (AVX512-VNNI)
    vnni_256: bool  # vpdpbusd on 32 bytes (AVX512-VNNI with VL, or AVX-VNNI)
    avx2: bool = False  # vpmaddubsw / vpmaddwd on 32 bytes (the byte dot products without VNNI)
    avx512: bool = False  # 32 vector registers of 64 bytes (AVX-512F)
    gfni: bool = False  # vgf2p8affineqb: every byte's bits remapped by an 8 x 8 bit matrix


@lru_cache(maxsize=None)
def _host_features() -> dict:
    import llvmlite.binding as llvm

    return {name: bool(on) for name, on in llvm.get_host_cpu_features().items()}


def features() -> Features:
    """The features the kernels may use: the host's, without the CPU-specific ones when forced portable."""
    host = _host_features()
    x86 = host.get("sse2", False)
    vnni_512 = host.get("avx512vnni", False)
    vnni_256 = vnni_512 and host.get("avx512vl", False) or host.get("avxvnni", False)
    avx512 = host.get("avx512f", False)
    gfni = host.get("gfni", False)
    if forced_portable():
        vnni_512 = vnni_256 = avx512 = gfni = False
    return Features(x86=x86, f16c=host.get("f16c", False), vnni_512=vnni_512, vnni_256=vnni_256,
                    avx2=x86 and host.get("avx2", False), avx512=avx512, gfni=gfni)


def amx_int8() -> bool:
    """Whether the kernels may use AMX tiles for int8 products (see the module docstring)."""
    if forced_portable() or os.environ.get(NO_AMX_ENV, "") not in ("", "0"):
        return False
    return sys.platform.startswith("linux") and machine().lower() in _X86_64 and _tile_data_granted()


@lru_cache(maxsize=None)
def _tile_data_granted() -> bool:
    """The CPU lists amx_tile and amx_int8, and Linux (5.16 on) lets this process use the tile
    data: asked once, as a process must before its first tile instruction."""
    import ctypes

    flags = cpuinfo().get("flags", "").split()
    if "amx_tile" not in flags or "amx_int8" not in flags:
        return False
    sys_arch_prctl, req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18
    return ctypes.CDLL(None, use_errno=True).syscall(sys_arch_prctl, req_xcomp_perm, xfeature_xtiledata) == 0


def numba_target() -> tuple[str, str] | None:
    """(CPU name, extra features) Numba must compile for instead of the host CPU, or None:
    x86-64-v3 when forced portable on an x86-64 that has what it needs (never a CPU above
    the host's, which would not run)."""
    if not forced_portable() or machine().lower() not in _X86_64:
        return None
    host = _host_features()
    if not all(host.get(name, False) for name in _PORTABLE_X86_NEEDS):
        return None
    return PORTABLE_X86_CPU, ""


def ggml_f32_lanes() -> int:
    """The float32 lanes of the vectors ggml's CPU backend sums dot products in, as llama.cpp
    builds itself for this machine (GGML_NATIVE: -march=native): 16 with AVX-512F, 8 with
    AVX2 and FMA (also when forced portable: llama.cpp's GGML_AVX2 build), 0 where its order
    is not modelled here (other CPUs). Summation order decides the last bit of a float32."""
    if machine().lower() not in _X86_64:
        return 0
    host = _host_features()
    if host.get("avx512f", False) and not forced_portable():
        return 16
    return 8 if host.get("avx2", False) and host.get("fma", False) else 0


@lru_cache(maxsize=None)
def ggml_loop_lanes() -> int:
    """The float32 lanes of the loops GCC vectorizes on its own in llama.cpp's native build
    (ggml_vec_dot_f32's leftovers), given ggml_f32_lanes(): the vector width GCC prefers for
    -march=native, which follows the CPU model GCC takes this one for (an AVX-512 Xeon VM
    that reports a Rocket Lake model: 256 bits, 8 lanes; another Xeon VM and a Zen 4: 512).
    Asked of gcc itself; without it (or with another compiler), the full vector."""
    lanes = ggml_f32_lanes()
    if lanes != 16 or not sys.platform.startswith("linux"):
        return lanes
    import re
    import shutil
    import subprocess

    gcc = shutil.which("gcc")
    try:
        options = subprocess.run([gcc, "-march=native", "-Q", "--help=target"], capture_output=True, text=True,
                                 timeout=30).stdout if gcc else ""
    except (OSError, subprocess.SubprocessError):
        options = ""
    width = re.search(r"^\s*-mprefer-vector-width=\s+(\d+)\s*$", options, re.MULTILINE)
    return min(lanes, int(width.group(1)) // 32) if width else lanes
