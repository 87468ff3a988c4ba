"""Opening the files tuneplan reads and appends to, so that a bad file never hangs or floods it.

Core (standard library only). Every file the program reads of its own (a run's `status.json`,
`config.toml`, `events.jsonl`, a preset, a dataset) may have been replaced by something that is
not a file: a FIFO (opening it for reading waits for a writer forever, `fifo(7)`), `/dev/zero`
(reads never end), a 2 GiB sparse file, or a symlink to a file elsewhere. `open_regular` opens
with `O_NONBLOCK`, so a FIFO opens at once instead of blocking, then checks with `fstat` on the
open descriptor (no race with a rename) that it is a regular file; `read_bounded` reads at most
a stated number of bytes. Refusals are `FileRefused`, an `OSError` whose `strerror` says why in
words, so callers that already turn `OSError` into one line need nothing new.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO

KIB, MIB = 1 << 10, 1 << 20

STATUS_MAX_BYTES = 4 * MIB
"""`status.json` holds a few dozen fields and a 50-line log tail: a few KB."""
CONFIG_MAX_BYTES = 4 * MIB
"""A run config or preset is a few KB of TOML."""
EVENTS_TAIL_BYTES = 1 * MIB
"""How much of the end of `events.jsonl` a summary reads (`tuneplan runs`)."""


class FileRefused(OSError):
    """A file tuneplan will not read: not a regular file, a symlink where none is allowed, or
    larger than the bound for its kind. `strerror` says which, in words."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike, flags: int = os.O_RDONLY, *, follow_symlinks: bool = True,
                 mode: int = 0o644) -> int:
    """Open `path` and return the descriptor, only if it is a regular file.

    `O_NONBLOCK` makes a FIFO open at once (`open(2)`: "neither the open() nor any subsequent
    I/O operations on the file descriptor ... will cause the calling process to wait"), and the
    type check on the open descriptor (`fstat`) refuses it before anything is read; the flag is
    then cleared, so a regular file behaves as usual. `follow_symlinks=False` adds `O_NOFOLLOW`
    (the last path component may not be a symlink: ELOOP, reported as a refusal)."""
    extra = os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        extra |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags | extra, mode)
    except OSError as exc:
        if not follow_symlinks and exc.errno == errno.ELOOP and os.path.islink(path):
            raise FileRefused(errno.ELOOP, "is a symlink (tuneplan does not follow links for its own files)",
                              os.fspath(path)) from None
        if exc.errno == errno.ENXIO:  # write-only open of a FIFO with no reader (`open(2)`)
            raise FileRefused(errno.ENXIO, "is a FIFO (named pipe), not a regular file", os.fspath(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(errno.EINVAL, f"is {_kind(st.st_mode)}, not a regular file", os.fspath(path))
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def too_large(path: str | os.PathLike, size: int, limit: int) -> FileRefused:
    return FileRefused(errno.EFBIG, f"is {format_bytes(size)}, larger than the {format_bytes(limit)} "
                                    f"tuneplan reads from such a file", os.fspath(path))


def read_bounded(path: str | os.PathLike, limit: int, *, follow_symlinks: bool = True) -> bytes:
    """The whole content of a regular file of at most `limit` bytes (`FileRefused` otherwise;
    a file that grows while read is cut at `limit + 1` bytes and refused the same way)."""
    fd = open_regular(path, follow_symlinks=follow_symlinks)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise too_large(path, size, limit)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(limit + 1 - total, 1 * MIB))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise too_large(path, total, limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text_bounded(path: str | os.PathLike, limit: int, *, follow_symlinks: bool = True) -> str:
    """`read_bounded`, decoded as UTF-8 (UnicodeDecodeError when it is not)."""
    return read_bounded(path, limit, follow_symlinks=follow_symlinks).decode("utf-8")


def open_binary(path: str | os.PathLike, *, follow_symlinks: bool = True) -> IO[bytes]:
    """A regular file opened for reading in binary (a FIFO or device is refused at once); for
    readers that stream in bounded chunks."""
    return os.fdopen(open_regular(path, follow_symlinks=follow_symlinks), "rb")


def open_append(path: str | os.PathLike) -> int:
    """A run file opened for appending (created if missing) without following a symlink: a link
    planted in the run folder never redirects tuneplan's writes to a file elsewhere."""
    return open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, follow_symlinks=False)


def read_tail(path: str | os.PathLike, max_bytes: int, *, follow_symlinks: bool = True) -> bytes:
    """The last `max_bytes` of a regular file (seeking, so a 2 GiB file costs what a small one
    does), starting at a line boundary when the read began mid-file."""
    fd = open_regular(path, follow_symlinks=follow_symlinks)
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - max_bytes)
        data = os.pread(fd, max_bytes, start)
    finally:
        os.close(fd)
    if start > 0:
        cut = data.find(b"\n")
        data = data[cut + 1:] if cut >= 0 else b""
    return data


def read_head(path: str | os.PathLike, max_bytes: int, *, follow_symlinks: bool = True) -> bytes:
    """The first `max_bytes` of a regular file."""
    fd = open_regular(path, follow_symlinks=follow_symlinks)
    try:
        return os.pread(fd, max_bytes, 0)
    finally:
        os.close(fd)


def format_bytes(n: int | float) -> str:
    """Bytes with a unit that shows the number (`512 B`, `3.2 KiB`, `48.0 MiB`, `1.50 GiB`)."""
    n = float(n)
    if n < KIB:
        return f"{int(n)} B"
    for unit, scale in (("KiB", KIB), ("MiB", MIB), ("GiB", 1 << 30)):
        if n < scale * 1024 or unit == "GiB":
            value = n / scale
            return f"{value:.2f} {unit}" if unit == "GiB" else f"{value:.1f} {unit}"
    return f"{n:.0f} B"  # unreachable


def is_inside(path: Path, root: Path) -> bool:
    """Whether `path`, with every symlink resolved, lies inside `root` (also resolved)."""
    try:
        Path(path).resolve(strict=True).relative_to(Path(root).resolve(strict=True))
    except (OSError, ValueError, RuntimeError):
        return False
    return True
