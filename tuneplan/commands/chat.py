"""`tuneplan chat RUN`: talk to a run's adapter in the terminal (its chat template applies).

Type a message and press Enter; `/reset` forgets the conversation, `/exit` or Ctrl-D quits.
`--prompt TEXT` answers one prompt and exits."""

from __future__ import annotations

import argparse
import sys

from tuneplan.commands.arguments import finite_number, whole_number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", help="run name or folder (default: the newest run)")
    parser.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the per-user data folder)")
    parser.add_argument("--prompt", help="answer this one prompt and exit")
    parser.add_argument("--system", help="a system message for the conversation")
    parser.add_argument("--max-new-tokens", type=whole_number("--max-new-tokens", 1, 1_000_000), default=128)
    parser.add_argument("--temperature", type=finite_number("--temperature", 0, 100), default=0.0,
                        help="0 for greedy decoding (default), up to 100")


def run(args: argparse.Namespace) -> int:
    from tuneplan.services import paths, runs

    run_dir = runs.find_run(args.run, paths.runs_root(args.runs_dir))
    from tuneplan.training.inference import load_chat_model, reply

    for stream in (sys.stdout, sys.stderr):  # a terminal that is not UTF-8 gets "?", not a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    model, tokenizer, notes = load_chat_model(run_dir)
    for note in notes:
        print(f"tuneplan: {note}", file=sys.stderr)
    history = [{"role": "system", "content": args.system}] if args.system else []

    def answer(text: str) -> str:
        history.append({"role": "user", "content": text})
        out = reply(model, tokenizer, history, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
        history.append({"role": "assistant", "content": out})
        return out

    if args.prompt is not None:
        print(answer(args.prompt))
        return 0
    print(f"chatting with {run_dir.name} (/reset to start over, /exit or Ctrl-D to quit)")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            del history[1 if args.system else 0:]
            continue
        if text:
            print(f"model> {answer(text)}")
