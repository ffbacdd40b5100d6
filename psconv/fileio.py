"""The one way psconv writes a file: never a half-written file under the final name.

The bytes go to a temporary file in the same folder, are synced to disk, and only then take the
final name (``rename`` is atomic on POSIX). A crash at any point leaves either the old file or
the new one, never a mix, and no stray temporary file survives an error.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_stream", "FileExistsRefused"]


class FileExistsRefused(ValueError):
    """The target exists and the caller asked not to replace it."""


def atomic_write(path: str | os.PathLike[str], payload: bytes | str, *, overwrite: bool = True) -> Path:
    """Write ``payload`` (text is UTF-8 encoded) to ``path`` atomically.

    With ``overwrite=False`` an existing ``path`` is never replaced, not even one that appears
    while the payload is written (the final step is ``link``, which fails if the name exists).
    """
    with atomic_stream(path, overwrite=overwrite) as handle:
        handle.write(payload.encode() if isinstance(payload, str) else payload)
    return Path(path)


@contextlib.contextmanager
def atomic_stream(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write that appears under ``path`` only if the ``with`` block succeeds
    (for payloads streamed rather than held in memory, such as a download)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise FileExistsRefused(f"{str(path)!r} already exists")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _mode_for(path: Path) -> int:
    """The permissions ``open(path, "w")`` would give: an existing file's own, else 0o666 less
    the umask (``mkstemp`` makes 0o600 files, which a colleague or a web server cannot read)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # Linux states it; elsewhere reading it means setting it, for an instant another thread
    # creating a file would notice.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def _link_new(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsRefused(f"{str(path)!r} already exists") from None
    except OSError:
        # A file system without hard links: check, then rename (a tiny race, no lost data of ours).
        if path.exists():
            raise FileExistsRefused(f"{str(path)!r} already exists") from None
        os.replace(tmp, path)
