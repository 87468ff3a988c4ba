"""Spot-safe checkpoints: written whole or not at all, never onto a disk that cannot hold them.

`AtomicCheckpoints` is a mixin for the run's trainer (`sft.py`). transformers'
`Trainer._save_checkpoint` writes `checkpoint-N/` file by file and deletes the oldest
checkpoints at the end (`trainer_utils.rotate_checkpoints`). Here, for every save:

1. **free space first**: the disk must hold one more checkpoint (the size of the newest
   complete one, else `launcher.checkpoint_bytes` of the trainable parameters) plus
   `SAVE_MARGIN_BYTES`; otherwise `DiskSpaceError`, and the previous checkpoints stay;
2. the trainer writes into `checkpoints/.partial/checkpoint-N/` (its own `_get_output_dir`
   is pointed there), every file is fsync'ed, then one `rename` publishes `checkpoint-N/`
   and the folder is fsync'ed (POSIX rename is atomic; the fsyncs make it survive a power cut
   or a preempted VM, not only a killed process);
3. only then are old checkpoints rotated out, so the previous complete checkpoint lives
   until the new one is complete. A failed save removes its partial folder and says which
   step failed; leftovers of a killed save are removed by `clean_partials` at the next start.

`events.last_checkpoint` only ever sees published folders, so `resume` (also after a machine
restart) picks the newest complete checkpoint.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tuneplan.errors import UserError
from tuneplan.events import CHECKPOINTS_DIR, DISK_ERRNOS, last_checkpoint

if TYPE_CHECKING:
    import torch

PARTIAL_DIR = ".partial"
"""Under `checkpoints/`: where a checkpoint is written before it is published."""
SAVE_MARGIN_BYTES = 4 * 2**20
"""Room left after a checkpoint for status.json, events and the log (bytes)."""


class DiskSpaceError(UserError):
    """Not enough free space for the next checkpoint (checked before writing it)."""


class CheckpointWriteError(Exception):
    """Writing a checkpoint failed; the message names the checkpoint, the cause is chained."""


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _fsync_tree(path: Path) -> None:
    for f in sorted(path.rglob("*"), reverse=True):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(partial: Path, final: Path) -> None:
    """Make a fully written folder visible under its final name in one rename (an older
    folder of that name is moved aside first and removed after)."""
    _fsync_tree(partial)
    old = None
    if final.exists():
        old = partial.with_name(partial.name + ".old")
        os.replace(final, old)
    os.replace(partial, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_partials(run_dir: Path) -> list[Path]:
    """Remove what a killed save left behind (partial checkpoints, a partial final save, stale
    status temp files of dead processes); returns what was removed."""
    from tuneplan.events import ADAPTER_DIR, MODEL_DIR, STATUS_FILE

    run_dir = Path(run_dir)
    removed = []
    for p in [run_dir / CHECKPOINTS_DIR / PARTIAL_DIR, *(partial_dir(run_dir / d) for d in (ADAPTER_DIR, MODEL_DIR))]:
        if p.exists():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    from tuneplan.events import pid_alive

    for tmp in run_dir.glob(f".{STATUS_FILE}.*.tmp"):
        pid = tmp.name.split(".")[-2]
        if not (pid.isdigit() and pid_alive(int(pid))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def partial_dir(final: Path) -> Path:
    """Where a final save (`adapter/`, `model/`) is written before it is published."""
    return final.with_name(f".{final.name}.partial")


def check_final_space(run_dir: Path, trainable_params: int, method: str) -> None:
    """Raise `DiskSpaceError` unless the disk of `run_dir` can hold the final save."""
    from planner.gpus import format_gib
    from tuneplan.services import launcher, paths

    need = launcher.final_save_bytes(trainable_params, method) + SAVE_MARGIN_BYTES
    free = paths.free_bytes(run_dir)
    if free < need:
        ckpt = last_checkpoint(run_dir)
        kept = f"the last complete checkpoint ({ckpt.name}) is kept" if ckpt else "there is no checkpoint"
        raise DiskSpaceError(
            f"disk full (ENOSPC) before the final save: {format_gib(free, 3)} free in {run_dir}, it needs about "
            f"{format_gib(need, 3)}; {kept}: free space, then `tuneplan resume {Path(run_dir).name}`")


def check_space(run_dir: Path, step: int, trainable_params: int | None) -> None:
    """Raise `DiskSpaceError` unless the disk of `run_dir` can hold one more checkpoint."""
    from planner.gpus import format_gib
    from tuneplan.services import launcher, paths

    newest = last_checkpoint(run_dir)
    if newest is not None:
        need = _tree_bytes(newest)
    elif trainable_params is not None:
        need = launcher.checkpoint_bytes(trainable_params)
    else:
        return
    free = paths.free_bytes(run_dir)
    if free < need + SAVE_MARGIN_BYTES:
        kept = f"the last complete checkpoint ({newest.name}) is kept" if newest else "there is no earlier checkpoint"
        raise DiskSpaceError(
            f"disk full (ENOSPC) before saving checkpoint-{step}: {format_gib(free, 3)} free in {run_dir}, "
            f"a checkpoint needs about {format_gib(need + SAVE_MARGIN_BYTES, 3)}; {kept}: free space, then "
            f"`tuneplan resume {Path(run_dir).name}`")


def disk_fault(exc: BaseException) -> tuple[str, str] | None:
    """(errno name, the OS's words) when an exception, or one it was raised from, is the disk
    refusing a write (ENOSPC, EROFS, EFBIG, EDQUOT); None otherwise. Libraries that wrap the
    OS error in their own exception (safetensors, torch.save) are recognised by its text."""
    texts = {errno.ENOSPC: ("No space left on device", "os error 28"),
             errno.EFBIG: ("File too large", "os error 27"),
             errno.EROFS: ("Read-only file system", "os error 30"),
             errno.EDQUOT: ("Disk quota exceeded", "os error 122")}
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return DISK_ERRNOS[e.errno], e.strerror or os.strerror(e.errno)
        for code, needles in texts.items():
            if any(n in str(e) for n in needles):
                return DISK_ERRNOS[code], os.strerror(code)
        e = e.__cause__ or e.__context__
    return None


def disk_fault_message(name: str, strerror: str, where: str, run_dir: Path) -> str:
    """One line: what the disk refused, where, what is kept and how to go on."""
    fix = {"ENOSPC": "free space on its disk", "EDQUOT": "free space within your quota",
           "EROFS": "make the run folder writable", "EFBIG": "raise the file-size limit (`ulimit -f unlimited`)"}[name]
    ckpt = last_checkpoint(run_dir)
    kept = f"the last complete checkpoint is {ckpt.name}" if ckpt else "there is no complete checkpoint yet"
    return f"{name} ({strerror}) {where}; {kept}: {fix}, then `tuneplan resume {Path(run_dir).name}`"


def trainable_parameters(model: torch.nn.Module) -> int:
    """Parameters the optimizer updates (and a checkpoint saves with its states)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class AtomicCheckpoints:
    """Trainer mixin: free-space check, write into a partial folder, fsync, rename, rotate.
    `run_dir`, `save_sleep_seconds` (fault injection: a pause between writing and publishing,
    so a test can kill the run mid-save) are set by `sft.build_trainer`."""

    run_dir: Path | None = None
    save_sleep_seconds: float = 0.0
    _partial_root: str | None = None

    def _get_output_dir(self, trial):  # noqa: D401 - transformers' hook
        if self._partial_root is not None:
            return self._partial_root
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        root = Path(super()._get_output_dir(trial))
        step = self.state.global_step
        name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
        main = self.args.should_save
        if main and self.run_dir is not None:
            check_space(self.run_dir, step, trainable_parameters(self.model))
        partial_root = root / PARTIAL_DIR
        if main:
            shutil.rmtree(partial_root, ignore_errors=True)
            partial_root.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self._partial_root = str(partial_root)
        try:
            super()._save_checkpoint(model, trial)
            self.accelerator.wait_for_everyone()
            if self.save_sleep_seconds:
                time.sleep(self.save_sleep_seconds)
            if main:
                publish(partial_root / name, root / name)
        except Exception as exc:
            if main:
                shutil.rmtree(partial_root, ignore_errors=True)
            raise CheckpointWriteError(f"while saving {name}: {type(exc).__name__}: {str(exc).strip()[:200]}") from exc
        finally:
            self._partial_root = None
        if main:
            shutil.rmtree(partial_root, ignore_errors=True)
            rotate_checkpoints(output_dir=str(root), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()
