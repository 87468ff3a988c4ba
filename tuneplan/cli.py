"""The `tuneplan` command line.

Every subcommand lives in `tuneplan/commands/<name>.py` with two functions:
`add_arguments(parser)` (cheap: argparse only) and `run(args) -> int` (does the work and
imports what it needs there, so `tuneplan --help` never loads torch or textual).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from tuneplan import __version__
from tuneplan.errors import EXIT_BAD_INPUT, UserError

# name -> one-line help. Order is the order shown in --help.
COMMANDS: dict[str, str] = {
    "plan": "dry-run: estimate memory, speed and cost and pick the fastest configuration that fits",
    "train": "plan and launch a detached training run",
    "compare": "bake-off: short trials of LoRA, QLoRA and full fine-tuning on your data, evaluated side by side",
    "probe": "measure the plan on this machine for a few optimizer steps, beside the prediction",
    "runs": "list runs with status, progress and loss",
    "attach": "open the live dashboard of a run (default: the newest)",
    "stop": "checkpoint a run and stop it",
    "save": "ask a running run to checkpoint at its next step",
    "resume": "continue a stopped or crashed run from its last checkpoint",
    "chat": "talk to a trained adapter in the terminal",
    "export": "make a run servable: merged safetensors, an Ollama Modelfile, or the vLLM command",
    "eval": "evaluate a run's tuned model beside its base on its held-out split or --data (and lm-eval tasks)",
    "push": "upload a run's adapter (or merged model) to the Hugging Face Hub with a model card",
    "presets": "list, show, save and delete presets",
    "demo": "train a tiny model on the bundled dataset, end to end, on any machine",
    "serve": "open the wizard (or a run's dashboard) in a browser tab via textual-serve",
}


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (plus a pointer to --help), exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="tuneplan",
        description="Fine-tune 7B-70B LLMs with LoRA/QLoRA on the GPU you have: "
        "plan what fits, launch detached runs, follow them live. "
        "Without a subcommand, opens the wizard.",
    )
    parser.add_argument("--version", action="version", version=f"tuneplan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = _command_module(name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
    return parser


def _join_dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`--vram -5GiB` -> `--vram=-5GiB`: argparse takes a value that starts with `-` (and is not
    a plain negative number) for a flag and answers "expected one argument"; joined, the value
    reaches the command, which says what is wrong with it."""
    if not argv:
        return argv
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    command = sub.choices.get(argv[0]) if sub is not None else None
    if command is None:
        return argv
    takes_value = {o for a in command._actions if a.nargs != 0 for o in a.option_strings}
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if token in takes_value and len(nxt) > 1 and nxt[0] == "-" and (nxt[1].isdigit() or nxt[1] == "."):
            out.append(f"{token}={nxt}")
            i += 2
        else:
            out.append(token)
            i += 1
    return out


def _command_module(name: str):
    return importlib.import_module(f"tuneplan.commands.{name}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_dash_values(parser, sys.argv[1:] if argv is None else list(argv)))
    name = args.command or "wizard"
    try:
        return _command_module(name).run(args)
    except UserError as exc:
        print(f"tuneplan: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
