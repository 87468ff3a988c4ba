"""`tuneplan export RUN --merge [--out DIR]`: merge the adapter into a 16-bit base and write
safetensors ready for serving (vLLM, TGI, llama.cpp conversion). A QLoRA run's adapter is
merged into a freshly loaded 16-bit base, not into the 4-bit one. RAM and disk are checked
first; an existing folder is never overwritten."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", help="run name or folder (default: the newest run)")
    parser.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the per-user data folder)")
    parser.add_argument("--merge", action="store_true", help="merge the adapter into the base model (required)")
    parser.add_argument("--out", help="output folder (default: RUN/merged)")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto",
                        help="dtype of the merged weights (auto: the run's 16-bit compute dtype, else bfloat16)")


def run(args: argparse.Namespace) -> int:
    from tuneplan.errors import UserError
    from tuneplan.services import paths, runs

    if not args.merge:
        raise UserError("export needs --merge (the adapter alone is already in RUN/adapter)")
    if args.out is not None:
        from pathlib import Path

        from tuneplan.errors import check_path

        if Path(check_path(args.out, "--out")).expanduser().is_file():
            raise UserError(f"--out {args.out} is a file, not a folder: pass a new folder")
    run_dir = runs.find_run(args.run, paths.runs_root(args.runs_dir))
    from tuneplan.errors import NON_FINITE_PREFIX
    from tuneplan.events import read_status

    status = read_status(run_dir)
    if status is not None and status.phase == "failed" and (status.error or "").startswith(NON_FINITE_PREFIX):
        raise UserError(f"run {run_dir.name} failed with {status.error.split(':')[0]}: its weights are not "
                        "numbers, there is nothing to export")
    from tuneplan.training.inference import export_merged

    out = export_merged(run_dir, args.out, dtype=args.dtype)
    print(f"merged model written to {out}")
    return 0
