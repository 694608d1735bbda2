"""llamatool.elf_loader: relocatable objects made by LLVM (as the saved kernels are), loaded
and run without it; damaged objects are errors, never crashes."""

from __future__ import annotations

import ctypes

import llvmlite.binding as llvm
import pytest

from llamatool.elf_loader import Loader, ObjectError

PICK_IR = r"""
@counter = global i64 0
@shared = common global i64 0, align 8
@table = internal constant [4 x i64] [i64 10, i64 20, i64 30, i64 40]
declare i64 @labs(i64)

define i64 @pick(i64 %i) {
  %p = getelementptr [4 x i64], ptr @table, i64 0, i64 %i
  %v = load i64, ptr %p
  %c = load i64, ptr @counter
  %c1 = add i64 %c, 1
  store i64 %c1, ptr @counter
  store i64 %v, ptr @shared
  %n = sub i64 0, %v
  %a = call i64 @labs(i64 %n)
  ret i64 %a
}
"""

TWICE_IR = r"""
declare i64 @pick(i64)

define i64 @twice(i64 %i) {
  %a = call i64 @pick(i64 %i)
  %b = mul i64 %a, 2
  ret i64 %b
}
"""

MISSING_IR = r"""
declare i64 @llamatool_no_such_function(i64)

define i64 @calls_nothing(i64 %i) {
  %a = call i64 @llamatool_no_such_function(i64 %i)
  ret i64 %a
}
"""

I64_OF_I64 = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)


def _object(ir: str) -> bytes:
    """Machine code for the large code model, as Numba's cfuncs are emitted."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    tm = llvm.Target.from_default_triple().create_target_machine(codemodel="large")
    module = llvm.parse_assembly(ir)
    module.verify()
    return tm.emit_object(module)


def _permissions(address: int) -> str:
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= address < hi:
                return perms
    return ""


def test_loads_runs_and_links_objects_with_the_process_and_each_other():
    loader = Loader()
    first = loader.load(_object(PICK_IR))
    pick = I64_OF_I64(first["pick"])
    assert [pick(i) for i in range(4)] == [10, 20, 30, 40]  # constants, and labs from libc
    assert ctypes.c_int64.from_address(first["counter"]).value == 4  # writable data
    assert ctypes.c_int64.from_address(first["shared"]).value == 40  # a common symbol
    twice = I64_OF_I64(loader.load(_object(TWICE_IR))["twice"])  # calls into the first object
    assert twice(1) == 40
    assert loader.symbol("pick") == first["pick"]
    assert loader.symbol("labs") != 0 and loader.symbol("llamatool_no_such_function") == 0


def test_code_is_executable_and_not_writable_data_is_writable_and_not_executable():
    loader = Loader()
    syms = loader.load(_object(PICK_IR))
    code, data = _permissions(syms["pick"]), _permissions(syms["counter"])
    if not code:
        pytest.skip("no /proc/self/maps here")
    assert code.startswith("r-x"), code
    assert data.startswith("rw-"), data


def test_a_symbol_the_process_lacks_is_an_error():
    with pytest.raises(ObjectError, match="llamatool_no_such_function"):
        Loader().load(_object(MISSING_IR))


def test_every_truncation_is_an_error_not_a_crash():
    whole = _object(PICK_IR)
    for n in range(0, len(whole), 3):
        with pytest.raises(ObjectError):
            Loader().load(whole[:n])


@pytest.mark.parametrize("damage", ["magic", "class", "machine", "section count", "section size"])
def test_damaged_headers_are_errors(damage):
    data = bytearray(_object(PICK_IR))
    if damage == "magic":
        data[:4] = b"\x7fELG"
    elif damage == "class":
        data[4] = 1  # 32-bit
    elif damage == "machine":
        data[18:20] = (183).to_bytes(2, "little")  # aarch64
    elif damage == "section count":
        data[60:62] = (0xFFFF).to_bytes(2, "little")
    else:  # the first allocated section claims an absurd size
        shoff = int.from_bytes(data[40:48], "little")
        shnum = int.from_bytes(data[60:62], "little")
        for i in range(shnum):
            header = shoff + 64 * i
            flags = int.from_bytes(data[header + 8:header + 16], "little")
            if flags & 0x2:  # SHF_ALLOC
                data[header + 4:header + 8] = (8).to_bytes(4, "little")  # NOBITS: no bytes in the file to check
                data[header + 32:header + 40] = (1 << 50).to_bytes(8, "little")
                break
    with pytest.raises(ObjectError):
        Loader().load(bytes(data))
