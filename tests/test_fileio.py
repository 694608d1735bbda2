"""fileio.atomic_output: the file appears whole or not at all, and its data goes to disk
while it is being written (so the final fsync has little left to do)."""

from __future__ import annotations

import os

import pytest

from llamatool import fileio
from llamatool.errors import LlamatoolError


def test_output_appears_on_success_with_every_byte(tmp_path):
    path = tmp_path / "out.bin"
    pieces = [os.urandom(n) for n in (1, 4096, 3 << 20, 7, 12 << 20, 100)]
    with fileio.atomic_output(path) as f:
        for p in pieces:
            f.write(p)
        f.write(memoryview(pieces[2])[5:9000])
    assert path.read_bytes() == b"".join(pieces) + pieces[2][5:9000]
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_nothing_is_left_behind_on_error(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), fileio.atomic_output(path) as f:
        f.write(os.urandom(10 << 20))
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"precious")
    with pytest.raises(LlamatoolError, match="already exists"):
        with fileio.atomic_output(path) as f:
            f.write(b"x")
    assert path.read_bytes() == b"precious"
    with fileio.atomic_output(path, force=True) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"


@pytest.mark.skipif(fileio._sync_file_range() is None, reason="no sync_file_range in this C library (not Linux)")
def test_written_data_is_sent_to_disk_in_consecutive_ranges(tmp_path, monkeypatch):
    """Every WRITEBACK_BYTES the range written since the last time starts its writeback."""
    calls = []
    real = fileio._sync_file_range()

    def record(fd, offset, nbytes, flags):
        calls.append((offset, nbytes, flags))
        return real(fd, offset, nbytes, flags)

    monkeypatch.setattr(fileio, "_sync_file_range", lambda: record)
    monkeypatch.setattr(fileio, "WRITEBACK_BYTES", 1 << 20)
    data = os.urandom(5 << 20)
    with fileio.atomic_output(tmp_path / "out.bin") as f:
        for i in range(0, len(data), 300_000):
            f.write(data[i : i + 300_000])
    assert (tmp_path / "out.bin").read_bytes() == data
    assert len(calls) >= 4 and all(flags == 2 for _, _, flags in calls)
    ends = [0] + [offset + n for offset, n, _ in calls]
    assert [offset for offset, _, _ in calls] == ends[:-1]  # consecutive, from the start
    assert all(n >= 1 << 20 for _, n, _ in calls) and ends[-1] <= len(data)
