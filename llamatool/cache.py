"""Where llamatool keeps the machine code it compiles, and when it may trust what is there.

The folder: $LLAMATOOL_CACHE_DIR, else llamatool/ in the user's cache folder
($XDG_CACHE_HOME or ~/.cache). Importing this module is free: it does not import Numba.

Machine code found in the cache is run, so the cache is trusted the way ccache and pip
trust theirs: by who can write it. Folders are made 0700; a folder on the way to what is
loaded, or a saved object, that is not owned by the current user or that group or others
can write is refused (the caller compiles in memory instead, and one line on stderr says
so, once per process). A folder of the user's own that others can read but not write
(made 0755 by an older llamatool) is closed to 0700, so nothing Numba makes inside it
later, with the process's umask, is reachable by anyone else.

The sha256 line at the head of a saved object (quants/native.py) is a truncation check,
nothing more: a digest kept anywhere in the cache can be rewritten by whoever can rewrite
the object, and a key to sign with would sit in the same home folder. Ownership and modes
are what keep other users' code out; the digest catches a half-written or damaged file.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from pathlib import Path

_PRIVATE = 0o700
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def cache_dir() -> Path:
    root = os.environ.get("LLAMATOOL_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "llamatool"


def source_hash(path: Path) -> str:
    """A short hash of the sources a cache key depends on: every .py file of a folder
    (names and contents), or one file."""
    path = Path(path)
    h = hashlib.sha256()
    for source in sorted(path.glob("*.py")) if path.is_dir() else [path]:
        h.update(source.name.encode())
        h.update(source.read_bytes())
    return h.hexdigest()[:16]


# --- trust ------------------------------------------------------------------------------------

_warned: list[str] = []  # the one warning of this process, once given


def refuse(path: Path, why: str) -> None:
    """Say once per process, in one line, that the cache is not used and why."""
    if not _warned:
        _warned.append(f"{path}: {why}")
        print(f"llamatool: warning: not using the kernel cache: {path} {why}; compiling in memory", file=sys.stderr, flush=True)


def distrust(st: os.stat_result) -> str | None:
    """Why a file or folder with this status must not be trusted, or None."""
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not {os.geteuid()}"
    if st.st_mode & _OTHERS_WRITE:
        return f"is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _own_folder(path: Path) -> str | None:
    """Make path (a folder) if missing, 0700; why it cannot be trusted, or None."""
    try:
        path.mkdir(mode=_PRIVATE, exist_ok=True)
        st = os.stat(path)
    except OSError as e:
        return f"cannot be made or read ({e.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    why = distrust(st)
    if why is None and stat.S_IMODE(st.st_mode) & ~_PRIVATE:
        try:
            os.chmod(path, _PRIVATE)  # readable by others (an older llamatool's 0755): close it
        except OSError as e:
            return f"cannot be made private ({e.strerror})"
    return why


_trusted: dict[Path, bool] = {}


def private_folder(*parts: str) -> Path | None:
    """cache_dir()/parts..., each level made 0700 where missing; None (after the warning)
    when it or a folder above it in the cache is not the user's own or others can write it.
    Checked once per folder per process."""
    path = cache_dir()
    for level in range(len(parts) + 1):
        folder = path.joinpath(*parts[:level])
        ok = _trusted.get(folder)
        if ok is None:
            ok = _checked(folder)
        if not ok:
            return None
    return path.joinpath(*parts)


def _checked(path: Path) -> bool:
    if not path.parent.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # ~/.cache itself: the user's to set up
        except OSError:
            pass
    why = _own_folder(path)
    if why is not None:
        refuse(path, why)
    _trusted[path] = why is None
    return why is None


def read_trusted(path: Path) -> bytes | None:
    """The bytes of a file in a private_folder, or None when it is missing or (after the
    warning) not the user's own or writable by others. Checked on the open file, so it
    cannot be swapped between the check and the read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        why = distrust(st) or (None if stat.S_ISREG(st.st_mode) else "is not a regular file")
        if why is not None:
            refuse(path, why)
            return None
        return f.read()


def write_private(path: Path, data: bytes) -> bool:
    """Write data to path (in a private_folder) as the user's own file, 0600, atomically;
    False when it cannot be written (a read-only cache: built again next time)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        return False
