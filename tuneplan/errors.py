"""Errors that reach the user as one line (no traceback) and the exit codes they map to."""

from __future__ import annotations

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
"""How the error of such a run starts in `status.json`, so export and presets can refuse it."""
