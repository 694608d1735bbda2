"""Loading saved machine code into this process without LLVM.

The kernels' machine code is saved as ELF relocatable objects (x86-64 `.o` files that LLVM
emitted for Numba's cfuncs; see quants/native.py). Loading one through llvmlite's MCJIT
costs importing llvmlite and starting an LLVM engine: about 70 MB of memory and 50 ms,
the largest part of a warm `run` after the model itself. What a loader has to do for these
objects is small, so it is done here:

    1. copy the sections the program uses (code, constants, data) into fresh pages,
       zeroing the ones that hold no bytes (.bss);
    2. find every symbol: the object's own (section + offset), another loaded object's, or
       one of the process (libc, libm, Python's C API: dlsym through ctypes);
    3. patch the relocations, which is arithmetic on those addresses;
    4. make the code pages read + execute and the data pages read + write.

Only what LLVM emits for the large code model (what Numba compiles with) is accepted:
absolute 64-bit addresses and 64-bit PC-relative offsets, plus the 32-bit forms when
they fit. Anything else (another machine, a GOT/TLS relocation, a symbol the process
lacks) raises ObjectError, and the caller falls back to compiling. Unwind tables
(.eh_frame) are not registered: the kernels throw no C++ exceptions.

Callers check where an object comes from and that it is whole themselves (llamatool.cache:
only the user's own files in folders nobody else can write; quants/native.py: a sha256 line
against truncation); this module trusts the bytes it is given to be well formed machine code, but
still checks every offset it reads, so a damaged object is an error, not a crash.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import threading

# ELF constants (System V ABI, x86-64 supplement)
_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64, _ELFDATA2LSB, _ET_REL, _EM_X86_64 = 2, 1, 1, 62
_SHT_NOBITS, _SHT_SYMTAB, _SHT_RELA = 8, 2, 4
_SHF_WRITE, _SHF_ALLOC, _SHF_EXECINSTR = 0x1, 0x2, 0x4
_SHN_UNDEF, _SHN_ABS, _SHN_COMMON, _SHN_LORESERVE = 0, 0xFFF1, 0xFFF2, 0xFF00
_STT_SECTION = 3
_STB_LOCAL = 0
_R_X86_64_64, _R_X86_64_PC32, _R_X86_64_PLT32, _R_X86_64_32, _R_X86_64_32S, _R_X86_64_PC64 = 1, 2, 4, 10, 11, 24
_WIDE = (_R_X86_64_64, _R_X86_64_PC64)  # the 8-byte ones
_UNWIND_SECTIONS = (".eh_frame",)

_PAGE = mmap.PAGESIZE
_MAX_BYTES = 1 << 30  # no kernel object comes near this; a larger claim is a damaged header
_PROT_READ, _PROT_WRITE, _PROT_EXEC = 1, 2, 4


class ObjectError(Exception):
    """An object this loader cannot load (the message says why)."""


class _Section:
    __slots__ = ("name", "type", "flags", "offset", "size", "link", "info", "align", "entsize", "address")

    def __init__(self, name, type_, flags, offset, size, link, info, align, entsize):
        self.name, self.type, self.flags, self.offset, self.size = name, type_, flags, offset, size
        self.link, self.info, self.align, self.entsize = link, info, max(1, align), entsize
        self.address = 0  # where it is loaded; 0 = not loaded


class _Object:
    """The parts of an ELF64 relocatable object a loader needs, every offset checked."""

    def __init__(self, data: bytes):
        self.data = data
        if len(data) < 64 or data[:4] != _ELF_MAGIC:
            raise ObjectError("not an ELF object")
        if data[4] != _ELFCLASS64 or data[5] != _ELFDATA2LSB:
            raise ObjectError("not a 64-bit little-endian ELF object")
        e_type, e_machine = struct.unpack_from("<HH", data, 16)
        if e_type != _ET_REL or e_machine != _EM_X86_64:
            raise ObjectError(f"not an x86-64 relocatable object (type {e_type}, machine {e_machine})")
        shoff, = struct.unpack_from("<Q", data, 40)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)
        if shentsize != 64 or shnum == 0 or shstrndx >= shnum:
            raise ObjectError("bad section header table")
        self._check(shoff, shnum * 64, "section headers")
        raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + 64 * i) for i in range(shnum)]
        names = raw[shstrndx]
        self._check(names[4], names[5], "section names")
        self.sections = []
        for name, type_, flags, _addr, offset, size, link, info, align, entsize in raw:
            if type_ != _SHT_NOBITS:
                self._check(offset, size, "a section")
            self.sections.append(_Section(self._string(names[4], names[5], name), type_, flags, offset, size, link, info,
                                          align, entsize))

    def _check(self, offset: int, size: int, what: str) -> None:
        if offset < 0 or size < 0 or offset + size > len(self.data):
            raise ObjectError(f"truncated object: {what} ends past its end")

    def _string(self, table_offset: int, table_size: int, index: int) -> str:
        if index >= table_size:
            raise ObjectError("a name outside its string table")
        end = self.data.find(b"\0", table_offset + index, table_offset + table_size)
        if end < 0:
            raise ObjectError("an unterminated name")
        return self.data[table_offset + index:end].decode("utf-8", "replace")

    def symbols(self, symtab: _Section) -> list[tuple[str, int, int, int, int]]:
        """(name, binding << 4 | type, section index, value, size) of every symbol of symtab."""
        if symtab.link >= len(self.sections):
            raise ObjectError("a symbol table without its names")
        strtab = self.sections[symtab.link]
        out = []
        for i in range(symtab.size // 24):
            st_name, st_info, _other, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", self.data,
                                                                                     symtab.offset + 24 * i)
            out.append((self._string(strtab.offset, strtab.size, st_name), st_info, st_shndx, st_value, st_size))
        return out

    def relocations(self, rela: _Section):
        """(offset, type, symbol index, addend) of every entry of a RELA section."""
        for i in range(rela.size // 24):
            r_offset, r_info, r_addend = struct.unpack_from("<QQq", self.data, rela.offset + 24 * i)
            yield r_offset, r_info & 0xFFFFFFFF, r_info >> 32, r_addend


class _Region:
    """Fresh anonymous pages, written once, then protected."""

    _libc = None

    def __init__(self, size: int):
        if size > _MAX_BYTES:
            raise ObjectError(f"the object asks for {size} bytes of memory")
        self.size = max(_PAGE, -(-size // _PAGE) * _PAGE)
        self.map = mmap.mmap(-1, self.size, prot=_PROT_READ | _PROT_WRITE)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))

    def protect(self, offset: int, size: int, prot: int) -> None:
        if _Region._libc is None:
            _Region._libc = ctypes.CDLL(None, use_errno=True)
            _Region._libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        if size and _Region._libc.mprotect(self.address + offset, size, prot) != 0:
            raise ObjectError(f"mprotect failed (errno {ctypes.get_errno()})")


class Loader:
    """Loads objects into this process; symbols one object defines are visible to the ones
    loaded after it. Loaded code stays for the life of the process."""

    def __init__(self):
        self._symbols: dict[str, int] = {}  # global symbols of the objects loaded so far
        self._regions: list[_Region] = []  # kept alive: the code runs from them
        self._process = ctypes.CDLL(None)
        self._lock = threading.Lock()

    def symbol(self, name: str) -> int:
        """Address of a global symbol of a loaded object or of the process; 0 if none."""
        if name in self._symbols:
            return self._symbols[name]
        try:
            return ctypes.cast(getattr(self._process, name), ctypes.c_void_p).value or 0
        except AttributeError:
            return 0

    def load(self, data: bytes) -> dict[str, int]:
        """Load one object; returns the addresses of its global symbols."""
        with self._lock:
            return self._load(_Object(data))

    def _load(self, obj: _Object) -> dict[str, int]:
        loaded = [s for s in obj.sections if s.flags & _SHF_ALLOC and s.name not in _UNWIND_SECTIONS]
        symtabs = [s for s in obj.sections if s.type == _SHT_SYMTAB]
        if len(symtabs) != 1:
            raise ObjectError("an object needs exactly one symbol table")
        symbols = obj.symbols(symtabs[0])
        # code and constants first, then writable data: two runs of pages, two protections
        code = [s for s in loaded if not s.flags & _SHF_WRITE]
        data = [s for s in loaded if s.flags & _SHF_WRITE]
        code_size = _layout(code, 0)
        data_start = -(-code_size // _PAGE) * _PAGE
        end = _layout(data, data_start)
        commons = {}  # common symbols (Numba's environment pointers): zeroed data of their own
        for i, (_name, _info, shndx, align, size) in enumerate(symbols):
            if shndx == _SHN_COMMON:
                end = -(-end // max(1, align)) * max(1, align)
                commons[i] = end
                end += size
        region = _Region(end)
        for s in loaded:
            s.address += region.address
            if s.type != _SHT_NOBITS:
                ctypes.memmove(s.address, obj.data[s.offset:s.offset + s.size], s.size)
        addresses = [region.address + commons[i] if i in commons else self._address(obj, symbols, i)
                     for i in range(len(symbols))]
        for rela in obj.sections:
            if rela.type != _SHT_RELA or rela.info >= len(obj.sections):
                continue
            target = obj.sections[rela.info]
            if target.address == 0:
                continue  # relocations of a section not loaded (unwind tables)
            for offset, kind, sym, addend in obj.relocations(rela):
                if sym >= len(addresses) or offset + (8 if kind in _WIDE else 4) > target.size:
                    raise ObjectError(f"a relocation outside {target.name}")
                _patch(target.address + offset, kind, addresses[sym], addend)
        region.protect(0, data_start, _PROT_READ | _PROT_EXEC)
        self._regions.append(region)
        defined = {name: addresses[i] for i, (name, info, shndx, _v, _s) in enumerate(symbols)
                   if name and info >> 4 != _STB_LOCAL and shndx != _SHN_UNDEF}
        self._symbols.update(defined)
        return defined

    def _address(self, obj, symbols, i) -> int:
        name, info, shndx, value, _size = symbols[i]
        if i == 0:
            return 0
        if shndx == _SHN_UNDEF:
            address = self.symbol(name)
            if not address:
                raise ObjectError(f"the object needs {name}, which this process does not have")
            return address
        if shndx == _SHN_ABS:
            return value
        if shndx >= _SHN_LORESERVE or shndx >= len(obj.sections):
            raise ObjectError(f"symbol {name!r} in an unknown section")
        section = obj.sections[shndx]
        if section.address == 0:
            if info & 0xF == _STT_SECTION:
                return 0  # a section not loaded (unwind tables): only its own relocations use it
            raise ObjectError(f"symbol {name!r} in section {section.name}, which is not loaded")
        return section.address + value


def _layout(sections, start: int) -> int:
    """Give each section its offset (in .address, until the region is made); returns the end."""
    at = start
    for s in sections:
        if s.align > _MAX_BYTES or s.size > _MAX_BYTES:
            raise ObjectError(f"section {s.name} claims {s.size} bytes aligned to {s.align}")
        at = -(-at // s.align) * s.align
        s.address = at
        at += s.size
    return at


def _patch(place: int, kind: int, symbol: int, addend: int) -> None:
    if kind == _R_X86_64_64:
        ctypes.c_uint64.from_address(place).value = (symbol + addend) & 0xFFFFFFFFFFFFFFFF
    elif kind == _R_X86_64_PC64:
        ctypes.c_int64.from_address(place).value = symbol + addend - place
    elif kind in (_R_X86_64_PC32, _R_X86_64_PLT32):
        _put32(place, symbol + addend - place, signed=True)
    elif kind == _R_X86_64_32:
        _put32(place, symbol + addend, signed=False)
    elif kind == _R_X86_64_32S:
        _put32(place, symbol + addend, signed=True)
    else:
        raise ObjectError(f"relocation type {kind} is not supported")


def _put32(place: int, value: int, signed: bool) -> None:
    lo, hi = (-(1 << 31), (1 << 31) - 1) if signed else (0, (1 << 32) - 1)
    if not lo <= value <= hi:
        raise ObjectError("a 32-bit relocation out of range (the object was not built for the large code model)")
    ctypes.c_uint32.from_address(place).value = value & 0xFFFFFFFF
