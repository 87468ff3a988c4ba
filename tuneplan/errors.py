"""Errors that reach the user as one line (no traceback) and the exit codes they map to."""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_DOES_NOT_FIT = 1
EXIT_BAD_INPUT = 2
EXIT_FAILED = 3


class UserError(Exception):
    """Bad input the user can fix. The message names the thing and how to fix it."""

    exit_code = EXIT_BAD_INPUT


class NonFiniteTraining(UserError):
    """The loss or the gradient norm of a run stopped being a finite number: the weights are
    lost, so the run ends `failed` with this message (never `done`)."""

    exit_code = EXIT_FAILED


NON_FINITE_PREFIX = "non-finite"
"""How the error of such a run starts in `status.json` (its words; readers decide on
`status.failure`, `events.Failure.NON_FINITE`)."""


NAME_MAX = 255
PATH_MAX = 4096
"""Longest file name and path in bytes (Linux `limits.h`; ext4, xfs, btrfs and tmpfs all
take 255-byte names): beyond them the OS answers ENAMETOOLONG."""


def check_path(text: str | os.PathLike, what: str) -> str:
    """`text` if it can name a file; a one-line `UserError` naming `what` when one of its
    parts is longer than the file-name limit, the whole is longer than the path limit (the OS
    would raise `OSError: File name too long` from deep inside) or it holds a NUL."""
    text = os.fspath(text)
    if "\0" in text:
        raise UserError(f"{what} contains a NUL character")
    data = text.encode("utf-8", "surrogatepass")
    longest = max(len(part) for part in data.split(b"/"))
    if longest > NAME_MAX or len(data) > PATH_MAX:
        raise UserError(f"{what} is too long to be a file name ({text[:40]!r}..., {len(data):,} bytes; the limit "
                        f"is {NAME_MAX} per name and {PATH_MAX} per path)")
    return text
