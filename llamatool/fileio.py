"""Safe output files: write to a temporary file beside the target, rename at the end.

Every command that writes a file (convert, quantize, perplexity's logits file) goes
through `atomic_output`, so that an existing file is never overwritten without
--force, an input is never written over, and an interrupted run (error, Ctrl-C,
SIGTERM) leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import LlamatoolError


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


WRITEBACK_BYTES = 8 << 20  # written bytes that start their way to the disk at once
_SYNC_FILE_RANGE_WRITE = 2


@lru_cache(maxsize=None)
def _sync_file_range():
    """Linux's sync_file_range(fd, offset, nbytes, flags) from the C library, or None."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


class _WritebackFile(io.FileIO):
    """A file whose data starts its way to the disk every WRITEBACK_BYTES (without waiting
    for it), so that the fsync which ends atomic_output finds little left to write: the disk
    works while the data is being produced instead of after. Only where the C library has
    sync_file_range (Linux); elsewhere the fsync does it all, as it would anyway."""

    def __init__(self, fd: int):
        super().__init__(fd, "wb")
        self._start = 0  # where the data not yet sent on its way begins
        self._sync = _sync_file_range()

    def write(self, b) -> int:
        n = super().write(b)
        if self._sync is not None and n:
            end = self.tell()
            if end - self._start >= WRITEBACK_BYTES:
                self._sync(self.fileno(), self._start, end - self._start, _SYNC_FILE_RANGE_WRITE)
                self._start = end
        return n


def check_output_path(path: str | os.PathLike, *, force: bool = False, inputs=()) -> Path:
    """Refuse to write over an input (ever) or an existing file (unless force)."""
    path = Path(path)
    for src in inputs:
        if src is not None and Path(src).exists() and path.exists() and _same_file(path, Path(src)):
            raise LlamatoolError(f"{path}: refusing to write over the input file")
        if src is not None and Path(src).resolve() == path.resolve():
            raise LlamatoolError(f"{path}: refusing to write over the input file")
    if path.is_dir():
        raise LlamatoolError(f"{path}: is a directory")
    if path.exists() and not force:
        raise LlamatoolError(f"{path}: already exists (use --force to overwrite)")
    if not path.parent.exists():
        raise LlamatoolError(f"{path.parent}: output directory does not exist")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, force: bool = False, inputs=()) -> Iterator[BinaryIO]:
    """Yield a binary file open for writing; on success it becomes `path`.

    The temporary file lives in the target folder so that the final rename is
    atomic. On any exception (KeyboardInterrupt and SystemExit included) it is
    removed and the exception propagates.
    """
    path = check_output_path(path, force=force, inputs=inputs)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 & ~umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with io.BufferedWriter(_WritebackFile(fd)) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # Checked again at the end: the file may have appeared while we worked.
        check_output_path(path, force=force, inputs=inputs)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
