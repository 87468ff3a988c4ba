"""Number formatting for the screens: the core `tuneplan.formatting`, under the name the
screens import it by."""

from __future__ import annotations

from tuneplan.formatting import count, duration, gib, money, rate

__all__ = ["count", "duration", "gib", "money", "rate"]
