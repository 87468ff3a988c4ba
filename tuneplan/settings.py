"""The run settings, declared once: field metadata on the run configuration's sections.

A `Setting` rides on a field of `tuneplan.config`'s `TrainingConfig` (the hyperparameters) or
of the `[data]`, `[recovery]` and `[notify]` tables (`learning_rate: float = setting(2e-4,
flag="--lr", ...)`), and says how the outside world spells and checks it: its command-line
flag (None: a config key only), how a flag value is read, the rule a value must meet (one-line
`ConfigError` naming the key: `training.learning_rate must be > 0 (got 0)`) and its `--help`.
`SETTINGS` lists them in declaration order; `tuneplan train`'s flags, the config validation
and the overrides a `RunRequest` carries (`section.field` -> value) are generated from it.
Giving a config-only setting a flag is one change: its `flag=` (and `help=`).

Core layer: standard library and `tuneplan.errors` only (the knobs of `planner.setup.TrainSetup`
have their own registry, `tuneplan.knobs`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

COUNT, NUMBER, CHOICE, DURATION, SWITCH, URL = "count", "number", "choice", "duration", "switch", "url"
MAX_COUNT = 2**31 - 1
"""Largest whole number a count takes, knob or setting (`tuneplan.knobs` and `tuneplan.config`
re-export it): torch and the tokenizers index with 32-bit ints in places."""


@dataclass(frozen=True)
class Setting:
    """One run setting (a field of a config section) as the CLI and the validation see it."""

    kind: str
    """`count` (whole number in [lo, hi]), `number` (finite, in its range), `choice` (one of
    `choices`), `duration` (`30m`, `tuneplan.durations`), `switch` (true/false; the flag turns it
    on), `url` (a webhook or ntfy URL; the flag's `off` is none)."""
    flag: str | None = None
    """The command-line flag of `tuneplan train` (None: set in a config file or preset only)."""
    help: str | None = None
    group: str = "training"
    """The `--help` group: `training` or `alerts`."""
    choices: tuple[str, ...] = ()
    lo: float | None = None
    """Lowest value (`count`: default 1; `number`: None for no bound)."""
    hi: float | None = None
    """Highest value (`count`: default MAX_COUNT; `number`: None for no bound)."""
    lo_open: bool = False
    hi_open: bool = False
    at_most: float | None = None
    """A sanity cap said on its own (`must be at most 10`), on top of the range."""
    rule: Callable[[Any], str | None] | None = None
    """`url`: what is wrong with a value that is set (None: nothing), e.g.
    `tuneplan.config.notify_url_problem`."""
    metavar: str | None = None
    order: int = 0
    """Place of the flag in `--help` (declaration order within a section)."""
    review: str | None = None
    """Label of its row on the wizard's review screen; None: not on it."""
    review_row: int = 0
    """Place of that row, top to bottom."""
    review_help: str | None = None
    """The review screen's one-line help while the row has focus."""
    review_empty: str = ""
    """What the row shows while empty (a setting whose default is None)."""
    key: str = ""
    """`section.field`, filled in by `declare`."""

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    @property
    def dest(self) -> str:
        """The argparse attribute of the flag."""
        return (self.flag or "--" + self.name)[2:].replace("-", "_")

    def add_flag(self, parser: Any) -> None:
        """This setting's flag (its value None when not given, so a file's value stays)."""
        kw: dict[str, Any] = {"dest": self.dest, "help": self.help}
        if self.kind == SWITCH:
            kw.update(action="store_true", default=None)
        elif self.kind == COUNT:
            kw["type"] = int
        elif self.kind == NUMBER:
            kw["type"] = float
        elif self.kind == CHOICE:
            kw["choices"] = list(self.choices)
        if self.metavar:
            kw["metavar"] = self.metavar
        parser.add_argument(self.flag, **kw)

    def read(self, value: Any) -> Any:
        """A parsed flag value -> the config value (None: not given). Raises a one-line
        `UserError` naming the flag for a value its type cannot check (a duration)."""
        if value is None:
            return None
        if self.kind == URL:
            return "" if value == "off" else value
        if self.kind == DURATION:
            from tuneplan.durations import parse_duration
            from tuneplan.errors import UserError

            try:
                parse_duration(value)
            except ValueError as exc:
                raise UserError(f"{self.flag} {exc}") from None
        return value

    def problem(self, value: Any) -> str | None:
        """Why `value` is not a valid value of this setting (None: it is)."""
        if value is None:
            return None  # not set: the default applies (every optional setting's None)
        if self.kind == COUNT:
            lo = 1 if self.lo is None else int(self.lo)
            hi = MAX_COUNT if self.hi is None else int(self.hi)
            if not isinstance(value, int) or isinstance(value, bool):
                return "must be a whole number"
            if value < lo:
                return "must be > 0" if lo == 1 else f"must be >= {lo}"
            if value > hi:
                return f"must be at most {hi}"
            return None
        if self.kind == NUMBER:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                return "must be a finite number"
            low = self.lo if self.lo is not None else -math.inf
            ok = (value > low if self.lo_open else value >= low) and (
                self.hi is None or (value < self.hi if self.hi_open else value <= self.hi))
            if not ok:
                if self.hi is None:
                    return f"must be {'>' if self.lo_open else '>='} {self.lo:g}"
                left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
                return f"must be in {left}{self.lo:g}, {self.hi:g}{right}"
            if self.at_most is not None and value > self.at_most:
                return f"must be at most {self.at_most:g}"
            return None
        if self.kind == CHOICE:
            return None if value in self.choices else f"must be one of {', '.join(self.choices)}"
        if self.kind == DURATION:
            from tuneplan.durations import parse_duration

            try:
                parse_duration(value)
            except ValueError as exc:
                return str(exc)
            return None
        if self.kind == URL:
            return self.rule(value) if value and self.rule is not None else None
        return None

    def shown(self, value: Any) -> str:
        """`value` as an error message quotes it: a URL without what sits before an '@' (a
        password is never echoed), anything cut at 60 characters."""
        if self.kind == URL and isinstance(value, str):
            import re

            value = re.sub(r"//[^/@]*@", "//***@", value)
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."


def setting(default: Any, kind: str, **meta: Any) -> Any:
    """A dataclass field with `default` that is a run setting (`Setting(kind, **meta)`)."""
    return field(default=default, metadata={"setting": Setting(kind, **meta)})


def declared(section: str, cls: type) -> tuple[Setting, ...]:
    """The settings declared on the fields of the dataclass `cls` (the config table `section`)."""
    return tuple(replace(f.metadata["setting"], key=f"{section}.{f.name}")
                 for f in fields(cls) if "setting" in f.metadata)


def add_flags(parser: argparse.ArgumentParser, settings: Iterable[Setting], titles: Mapping[str, str]) -> None:
    """Every setting's flag that has one, in declaration order, under the `--help` group
    `titles[setting.group]`."""
    groups: dict[str, Any] = {}
    for s in sorted(settings, key=lambda s: s.order):
        if s.flag is None:
            continue
        if s.group not in groups:
            groups[s.group] = parser.add_argument_group(titles[s.group])
        s.add_flag(groups[s.group])


def given(args: argparse.Namespace, settings: Iterable[Setting]) -> dict[str, Any]:
    """The settings whose flag was given: `section.field` -> config value."""
    out: dict[str, Any] = {}
    for s in settings:
        if s.flag is None:
            continue
        value = s.read(getattr(args, s.dest, None))
        if value is not None:
            out[s.key] = value
    return out


def check(obj: Any, settings: Iterable[Setting], error: Callable[[str], Exception]) -> None:
    """Raise `error` naming the first setting of `obj` (one config section) whose value breaks its
    rule: `training.learning_rate must be > 0 (got 0)`."""
    for s in settings:
        value = getattr(obj, s.name)
        why = s.problem(value)
        if why:
            got = "" if s.kind == DURATION else f" (got {s.shown(value)})"
            raise error(f"{s.key} {why}{got}")  # a duration's message names the value itself


__all__ = ["Setting", "setting", "declared", "add_flags", "given", "check", "COUNT", "NUMBER", "CHOICE",
           "DURATION", "SWITCH", "URL", "MAX_COUNT"]
