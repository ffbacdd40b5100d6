"""The one atomic write, and the progress bars drawn only on a terminal."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from psconv import fileio, progress
from psconv.fileio import FileExistsRefused, atomic_stream, atomic_write


def test_atomic_write_replaces_or_refuses(tmp_path: Path) -> None:
    path = atomic_write(tmp_path / "sub" / "a.txt", "one")
    assert path.read_text() == "one"
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    with pytest.raises(FileExistsRefused, match="already exists"):
        atomic_write(path, "three", overwrite=False)
    assert path.read_text() == "two" and sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_failed_stream_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "download.bin"
    with pytest.raises(RuntimeError), atomic_stream(target) as handle:
        handle.write(b"partial")
        raise RuntimeError("connection lost")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_file_gets_the_umask_s_permissions(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        written = atomic_write(tmp_path / "ckpt.bin", b"x")
    finally:
        os.umask(old)
    assert written.stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("proc", [True, False], ids=["proc-status", "umask-call"])
def test_umask_read_with_or_without_proc(monkeypatch: pytest.MonkeyPatch, proc: bool) -> None:
    if not proc:  # as on macOS: no /proc/self/status
        monkeypatch.setattr(fileio, "Path", lambda _p: Path("/nonexistent/status"))
    old = os.umask(0o027)
    try:
        assert fileio._umask() == 0o027 and os.umask(0o027) == 0o027  # read, and left as it was
    finally:
        os.umask(old)


def test_replaced_file_keeps_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write(target, "new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o640


def test_bar_only_on_a_terminal_of_rank_0(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for tty, rank, drawn in ((False, "0", False), (True, "0", True), (True, "1", False)):
        stream = Tty() if tty else io.StringIO()
        monkeypatch.setattr("sys.stderr", stream)
        monkeypatch.setenv("RANK", rank)
        assert list(progress.iterate(range(3), "work")) == [0, 1, 2]
        assert ("work" in stream.getvalue()) == drawn, (tty, rank)
