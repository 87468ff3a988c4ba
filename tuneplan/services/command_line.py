"""The `tuneplan train` command line that launches a run configuration: the one builder behind
the wizard's "Equivalent command" (Review screen) and the command `tuneplan plan` ends with.

    train_command(config, ["--gpu", "rtx-4090"])  # 'tuneplan train --model ... --method lora ...'

Every knob the planner would choose is given (from the knob registry, `tuneplan.knobs`), so the
command runs as is without planning again. No torch, no textual.
"""

from __future__ import annotations

import shlex
from typing import Any, Sequence

from tuneplan.knobs import equivalent_flags


def train_command_parts(config: Any, target: Sequence[str] = ()) -> list[str]:
    """The command as argv. `target`: flags naming the card the plan was made for (`--gpu KEY`,
    `--vram SIZE`), so `train` checks the run is there; empty for the GPUs NVML finds here."""
    from tuneplan.config import SETTINGS_OF

    flag = {s.name: s.flag for s in SETTINGS_OF["training"]}  # the hyperparameters' flags (`tuneplan.settings`)
    t = config.training
    parts = ["tuneplan", "train", "--model", config.model.source, "--dataset", config.data.source,
             *equivalent_flags(config.setup)]
    if t.max_steps is not None:
        parts += [flag["max_steps"], str(t.max_steps)]
    else:
        parts += [flag["epochs"], f"{t.epochs:g}"]
    parts += [flag["learning_rate"], f"{t.learning_rate:g}"]
    if t.report_to != "none":
        parts += [flag["report_to"], t.report_to]
    return parts + list(target)


def train_command(config: Any, target: Sequence[str] = ()) -> str:
    """`train_command_parts` as one shell-quoted line."""
    return shlex.join(train_command_parts(config, target))


def wrap_command(parts: Sequence[str], width: int | None, indent: str = "  ") -> str:
    """A shell-quoted command over lines of at most `width` columns, broken between arguments
    with ` \\` continuations (a flag stays on the line of its value), so it pastes as one
    command. A single argument longer than the width (a long path) runs past it, unbroken.
    `width` None (not a terminal): one line."""
    if width is None:
        return indent + shlex.join(parts)
    words: list[str] = []
    quoted = [shlex.quote(p) for p in parts]
    i = 0
    while i < len(quoted):  # a flag and its value move together
        if quoted[i].startswith("-") and i + 1 < len(quoted) and not quoted[i + 1].startswith("-"):
            words.append(f"{quoted[i]} {quoted[i + 1]}")
            i += 2
        else:
            words.append(quoted[i])
            i += 1
    lines: list[str] = []
    line = indent
    for w in words:
        if line.strip() and len(line) + 1 + len(w) + 2 > width:
            lines.append(line + " \\")
            line = indent + "    "
        line = f"{line} {w}" if line.strip() else line + w
    lines.append(line)
    return "\n".join(lines)


DATASET_PLACEHOLDER = "YOUR_DATA.jsonl"
"""Stands for the dataset in the command of a plan made without `--dataset`."""


def plan_train_parts(outcome: Any, target: Sequence[str] = ()) -> list[str] | None:
    """The `tuneplan train` argv that trains what `outcome` (a `planning.PlanOutcome`) chose, or
    None when nothing fits. The dataset is the plan's `--dataset`, else DATASET_PLACEHOLDER."""
    from tuneplan.config import DataConfig, ModelConfig, RunConfig, TrainingConfig

    if not outcome.result.fits:
        return None
    request = outcome.request
    config = RunConfig(model=ModelConfig(source=request.model or outcome.model.source),
                       data=DataConfig(source=request.dataset_source or DATASET_PLACEHOLDER),
                       setup=outcome.result.choice.setup, training=TrainingConfig(epochs=request.epochs))
    return train_command_parts(config, target)


def changed_flags(old: Any, new: Any) -> list[str]:
    """The knob flags that turn setup `old` into `new` (`--batch 8 --grad-accum 2`), for a
    command that starts from a file (`train --preset NAME` / `--config PATH`)."""
    from tuneplan.knobs import KNOBS

    parts: list[str] = []
    for k in KNOBS:
        value = getattr(new, k.name)
        if value != getattr(old, k.name):
            parts += [k.flag, k.show(value)]
    return parts


def resume_command(run_name: str, runs_dir: str | None = None) -> str:
    """`tuneplan resume NAME` (with the `--runs-dir` the run was started with, if one was
    given): what `stop` and a Ctrl-C in `train --foreground` tell the user to run next."""
    return shlex.join(["tuneplan", "resume", run_name, *(["--runs-dir", runs_dir] if runs_dir else [])])
