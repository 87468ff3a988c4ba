"""Errors that reach the user as one line (no traceback) and the exit codes they map to."""

from __future__ import annotations

EXIT_OK = 0
EXIT_DOES_NOT_FIT = 1
EXIT_BAD_INPUT = 2
EXIT_FAILED = 3


class UserError(Exception):
    """Bad input the user can fix. The message names the thing and how to fix it."""

    exit_code = EXIT_BAD_INPUT
