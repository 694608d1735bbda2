"""AMX tile instructions for compiled code (Intel Sapphire Rapids and later).

A tile is a register of up to 16 rows x 64 bytes; `tile_dot(c, a, b)` (TDPBSUD) adds to the
int32 tile c the products of the signed bytes of tile a (M rows x K bytes) and the unsigned
bytes of tile b (K/4 rows of N x 4 bytes: the layout of gemm's packed panels, N = 16 weight
rows), in one instruction: M x 16 x K multiply-adds, exact int32 sums like vpdpbusd's. Only
compiled where host.amx_int8() (the CPU has it and Linux granted the process the tile data);
the tile numbers are compile-time constants, and a kernel loads a configuration
(`tile_config`: which tiles have how many rows and bytes) before its first tile instruction.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I8 = ir.IntType(8)
_PTR = ir.PointerType(_I8)
_I64 = ir.IntType(64)


def _call(builder, name: str, arg_types: list, args: list) -> None:
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), arg_types), name)
    builder.call(fn, args)


def _tiles(*tiles) -> list[int] | None:
    if not all(isinstance(t, types.IntegerLiteral) for t in tiles):
        return None  # typed again with the literal values
    return [int(t.literal_value) for t in tiles]


@intrinsic
def tile_config(typingctx, address):
    """ldtilecfg: load the 64-byte tile configuration at address."""

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.ldtilecfg", [_PTR], [builder.inttoptr(args[0], _PTR)])

    return types.void(address), codegen


@intrinsic
def tile_release(typingctx):
    """tilerelease: the tiles back to their initial state (the thread's next context switch saves none)."""

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilerelease", [], [])

    return types.void(), codegen


def _tile_memory(llvm_name: str, name: str, doc: str):
    """An intrinsic (tile, address, stride) for a tile load or store."""

    def typer(typingctx, tile, address, stride):
        n = _tiles(tile)
        if n is None:
            return None

        def codegen(context, builder, sig, args):
            _call(builder, llvm_name, [_I8, _PTR, _I64], [ir.Constant(_I8, n[0]), builder.inttoptr(args[1], _PTR), args[2]])

        return types.void(tile, address, stride), codegen

    typer.__name__ = typer.__qualname__ = name
    typer.__doc__ = doc
    return intrinsic(typer)


tile_load = _tile_memory("llvm.x86.tileloadd64", "tile_load", "tileloadd: tile <- its rows from address, stride bytes apart.")
tile_store = _tile_memory("llvm.x86.tilestored64", "tile_store", "tilestored: the tile's rows to address, stride bytes apart.")


@intrinsic
def tile_zero(typingctx, tile):
    n = _tiles(tile)
    if n is None:
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilezero", [_I8], [ir.Constant(_I8, n[0])])

    return types.void(tile), codegen


@intrinsic
def tile_dot(typingctx, c, a, b):
    """tdpbsud: c += a (signed bytes) . b (unsigned bytes, 4 per int32 lane)."""
    n = _tiles(c, a, b)
    if n is None:
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tdpbsud", [_I8, _I8, _I8], [ir.Constant(_I8, v) for v in n])

    return types.void(c, a, b), codegen
