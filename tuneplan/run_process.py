"""Which processes belong to a run, and the lock that makes one run have one trainer.

Core (no torch). Two facts identify a run's live trainer:

- **Process identity.** A pid alone is not a process: after a reboot or pid reuse the same
  number names something else. Every pid a run records in `status.json` comes with a
  `process_record`: its start time (`psutil.Process.create_time()`, seconds since the epoch,
  derived from the kernel's start tick, so it never changes for a process and differs for the
  next process that gets the pid) and its command line. A pid counts as the run's only while
  both still match (`is_same_process`).
- **The run lock.** `RUN_DIR/run.lock`, locked with `flock(LOCK_EX)` by the command that starts
  the trainer, before it changes anything in the run folder, and inherited by the supervisor and
  its worker (flock locks belong to the open file, which children share): the lock is held
  exactly as long as a process of that trainer lives, and released by the kernel when the last
  one dies (kill -9, reboot). A second `resume` (or a hand-started supervisor) cannot take it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Any

from tuneplan.files import FileRefused, open_regular

LOCK_FILE = "run.lock"
LOCK_FD_ENV = "TUNEPLAN_RUN_LOCK_FD"
"""Environment variable through which the launcher hands its locked fd to the supervisor."""
START_TIME_TOLERANCE = 1e-3
"""Seconds: `create_time` is computed from integer clock ticks and the boot time, so the same
process always gives the same value; the tolerance only absorbs float rounding."""


class RunLocked(Exception):
    """Another trainer holds the run's lock."""


def process_record(pid: int, *, armed: bool = False) -> dict[str, Any] | None:
    """`{"pid", "start_time", "cmdline", "armed"}` for a live process, None if it is gone.
    `armed`: the process has installed its SIGTERM handler (a stop may signal it)."""
    import psutil

    if not _valid_pid(pid):
        return None
    try:
        p = psutil.Process(pid)
        cmdline = p.cmdline()
        # a child that `Popen` just started may still be inside exec(): the kernel closes the
        # close-on-exec pipe Popen waits on before it lays out the new argv (fs/exec.c:
        # begin_new_exec, then create_elf_tables), so /proc/PID/cmdline can read empty for a moment
        deadline = time.monotonic() + 2.0
        while not cmdline and time.monotonic() < deadline and p.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.005)
            cmdline = p.cmdline()
        return {"pid": pid, "start_time": p.create_time(), "cmdline": cmdline, "armed": armed}
    except (psutil.Error, OSError):
        return None


def is_same_process(record: Any) -> bool:
    """Whether the process a record describes is still running: same pid, same start time,
    same command line, and not a zombie. A malformed record is never a match."""
    import psutil

    try:
        pid, start, cmdline = int(record["pid"]), float(record["start_time"]), list(record["cmdline"])
    except (TypeError, ValueError, KeyError, OverflowError):
        return False
    if not _valid_pid(pid):  # 0, -1: psutil raises ValueError; os.kill would signal a whole group
        return False
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(p.create_time() - start) <= START_TIME_TOLERANCE and p.cmdline() == cmdline
    except (psutil.Error, OSError):
        return False


def _valid_pid(pid: Any) -> bool:
    """A pid that can name one process: a positive int below the kernel's maximum (`pid_max`
    is at most 2**22 on Linux, `proc(5)`; 2**31 leaves room for other systems)."""
    return isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**31


def live_records(pids: list[int], records: list[Any]) -> list[dict[str, Any]]:
    """The records of `pids` whose process is still the one recorded (a pid without a record
    is not the run's: nothing recorded it at launch)."""
    wanted = set(pids)
    return [r for r in records if isinstance(r, dict) and r.get("pid") in wanted and is_same_process(r)]


# -- the run lock -------------------------------------------------------------------------------

def _open_lock(run_dir: Path) -> int:
    path = Path(run_dir) / LOCK_FILE
    try:  # a regular file, never through a symlink: the lock names this run's file only
        return open_regular(path, os.O_RDWR | os.O_CREAT, follow_symlinks=False)
    except FileRefused:
        raise
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and path.exists():
            return open_regular(path, follow_symlinks=False)  # flock works on a read-only fd
        raise


def acquire_lock(run_dir: Path, *, wait: float = 0.0) -> int:
    """Lock the run (exclusive, atomic: `flock`) and return the fd holding it. Waits up to
    `wait` seconds for a holder that is going away. Raises `RunLocked`, or OSError when the
    lock file cannot be created (read-only folder)."""
    fd = _open_lock(run_dir)
    deadline = time.monotonic() + max(wait, 0.5)  # a reader's probe holds it for microseconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise RunLocked(str(Path(run_dir) / LOCK_FILE)) from None
            time.sleep(0.05)


def lock_is_held(run_dir: Path) -> bool | None:
    """True when a trainer holds the run's lock, False when nobody does, None when there is no
    lock file (a run from before the lock existed, or never started)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = open_regular(path, follow_symlinks=False)
    except OSError:  # missing, or not a regular file (nobody's lock)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def inherited_lock_fd(run_dir: Path) -> int | None:
    """The locked fd the launcher passed to this process (`LOCK_FD_ENV`), if it really is an
    open file on this run's lock file; None otherwise."""
    raw = os.environ.get(LOCK_FD_ENV)
    if not raw:
        return None
    try:
        fd = int(raw)
        held, on_disk = os.fstat(fd), os.stat(Path(run_dir) / LOCK_FILE)
    except (ValueError, OSError):
        return None
    return fd if (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino) else None


def _lock_identity(run_dir: Path) -> tuple[int, int] | None:
    """(device, inode) of the run's lock file: a regular file, not a symlink; None otherwise."""
    import stat

    try:
        st = os.lstat(Path(run_dir) / LOCK_FILE)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def _open_file_identities(pid: int) -> set[tuple[int, int]] | None:
    """(device, inode) of every file a process holds open; None when they cannot be read (a
    process of another user, or gone). Linux: `/proc/PID/fd/N` (each a link the kernel
    resolves to the open file itself, even when renamed); elsewhere psutil's `open_files`."""
    out: set[tuple[int, int]] = set()
    fd_dir = f"/proc/{pid}/fd"
    if os.path.isdir("/proc/self/fd"):
        try:
            names = os.listdir(fd_dir)
        except OSError:
            return None
        for name in names:
            try:
                st = os.stat(f"{fd_dir}/{name}")
            except OSError:
                continue
            out.add((st.st_dev, st.st_ino))
        return out
    import psutil

    try:
        files = psutil.Process(pid).open_files()
    except (psutil.Error, OSError, ValueError):
        return None
    for f in files:
        try:
            st = os.stat(f.path)
        except OSError:
            continue
        out.add((st.st_dev, st.st_ino))
    return out


def holds_run_lock(pid: int, run_dir: Path) -> bool:
    """Whether process `pid` holds this run's lock file open while the lock is taken: the proof
    that it is this run's trainer before anything signals it. A run folder's `status.json` can
    name any live process with its real start time and command line (both readable in /proc),
    but not make that process hold the run's `run.lock` open; and only this user (or root) can
    read which files a process holds. A run without a lock, or whose lock is free, has no
    process to signal."""
    if not _valid_pid(pid) or lock_is_held(run_dir) is not True:
        return False
    ident = _lock_identity(run_dir)
    held = _open_file_identities(pid)
    return ident is not None and held is not None and ident in held
