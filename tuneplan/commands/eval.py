"""`tuneplan eval RUN`: the tuned model beside its base on the run's held-out split, or on every
row of another dataset (`--data SOURCE`) (loss, perplexity, and for chat data greedy answers
scored against the references), plus optional lm-evaluation-harness tasks (`--tasks`). Results go to `RUN/eval.json`, the run card and the
tracker (`tuneplan/training/evaluation.py`); `--json` prints the report as JSON."""

from __future__ import annotations

import argparse
import sys

from tuneplan.commands.arguments import whole_number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", help="run name or folder (default: the newest run)")
    parser.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the per-user data folder)")
    parser.add_argument("--data", metavar="SOURCE",
                        help="score every row of this dataset instead of the run's held-out split (a .jsonl/.json/"
                             ".csv/.parquet file, tuneplan:sample-chat or a Hub dataset id), formatted and masked "
                             "as the run trains; works on a run trained without --eval-fraction")
    parser.add_argument("--data-split", metavar="NAME",
                        help="the split of a Hub --data dataset (default train)")
    parser.add_argument("--tasks", metavar="T,...", default="",
                        help="lm-evaluation-harness tasks to run too, comma-separated (needs the `eval` extra)")
    parser.add_argument("--task-path", action="append", default=[], metavar="DIR",
                        help="a folder (or file) of lm-eval task YAML, for tasks on local data (repeatable)")
    parser.add_argument("--task-limit", type=whole_number("--task-limit", 1, 10**9), metavar="N",
                        help="at most N examples per lm-eval task")
    parser.add_argument("--max-examples", type=whole_number("--max-examples", 1, 10**9), metavar="N",
                        help="score only the first N held-out (or --data) examples")
    parser.add_argument("--max-answers", type=whole_number("--max-answers", 0, 10**9), default=100, metavar="N",
                        help="greedy answers per model, from the first scored rows (default 100; the loss "
                             "covers every row; 0: no answers)")
    parser.add_argument("--max-new-tokens", type=whole_number("--max-new-tokens", 1, 100_000), default=64,
                        metavar="N", help="longest greedy answer (default 64 tokens)")
    parser.add_argument("--force", action="store_true",
                        help="evaluate again and replace an existing RUN/eval.json (whichever data it scored)")
    parser.add_argument("--show", action="store_true", help="print the run's eval.json and evaluate nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")


def print_report(report, *, out=None) -> None:
    from tuneplan.services.eval_results import table_lines

    out = out or sys.stdout
    what = {"lora": "LoRA adapter", "qlora": "QLoRA adapter", "full": "full fine-tune"}.get(report.method, report.method)
    print(f"{report.run}: {what} ({report.weights}) beside its base {report.base_model}", file=out)
    scored = report.adapter.scored_tokens
    gen = f", greedy answers to {report.adapter.generated} prompts" if report.adapter.generated else ""
    if report.on_other_data:
        of = f" of its {report.data_rows} rows" if report.data_rows and report.data_rows != report.held_out_examples \
            else ""
        print(f"data: {report.data_label()}: {report.held_out_examples} examples{of} ({scored} scored tokens{gen}; "
              "not the run's held-out split)", file=out)
    elif report.held_out_examples:
        print(f"held-out split: {report.held_out_examples} examples ({scored} scored tokens{gen})", file=out)
    if report.tasks:
        print(f"lm-eval tasks: {', '.join(report.tasks)}", file=out)
    for line in table_lines(report):
        print(f"  {line}", file=out)
    if report.examples:
        print("examples:", file=out)
        for ex in report.examples:
            for label, text in (("prompt", ex.prompt), ("reference", ex.reference), ("base", ex.base),
                                ("tuned", ex.adapter)):
                print(f"  {label + ':':<10} {_one_line(text)}", file=out)
            print("", file=out)
    for note in report.notes:
        print(f"note: {note}", file=out)


def _one_line(text: str, limit: int = 100) -> str:
    text = " ".join(str(text).split())
    return (text if len(text) <= limit else text[: limit - 3] + "...") or "(empty)"


def run(args: argparse.Namespace) -> int:
    import json

    from tuneplan.errors import UserError
    from tuneplan.services import paths, runs
    from tuneplan.services.eval_results import eval_path, read_eval, run_card_path

    run_dir = runs.find_run(args.run, paths.runs_root(args.runs_dir))
    if args.show:
        if args.data is not None or args.data_split is not None:
            raise UserError("--show prints the saved eval.json (it names the data it scored); drop --data to show it, "
                            "or evaluate with --data (and --force to replace it)")
        report = read_eval(run_dir)
        if report is None:
            raise UserError(f"run {run_dir.name} has no readable eval.json yet: `tuneplan eval {run_dir.name}` makes it")
        if args.json:
            print(json.dumps(report.to_dict(), indent=1))
        else:
            print_report(report)
        return 0
    from tuneplan.training.evaluation import evaluate_run

    for stream in (sys.stdout, sys.stderr):  # a terminal that is not UTF-8 gets "?", not a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    report = evaluate_run(run_dir, tasks=tasks, max_examples=args.max_examples, max_new_tokens=args.max_new_tokens,
                          max_answers=args.max_answers, task_paths=args.task_path, task_limit=args.task_limit,
                          force=args.force, data=args.data, data_split=args.data_split, progress=lambda text: print(f"tuneplan: {text}", file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return 0
    print_report(report)
    card = run_card_path(run_dir, report.method)
    print(f"written to {eval_path(run_dir)}" + (f" and the run card {card}" if card.is_file() else ""))
    return 0
