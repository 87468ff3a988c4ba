"""`tuneplan push RUN --repo ID [--private] [--merged]`: upload a run's adapter (or the merged
model) to the Hugging Face Hub with a model card (`tuneplan/services/hub_push.py`).

The token comes from `HF_TOKEN` or the cached `hf auth login` and is never written anywhere.
`--merged` uploads the adapter merged into its 16-bit base (`RUN/merged`, made by the same
merge as `tuneplan export --format safetensors` when it is not there yet)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", help="run name or folder (default: the newest run)")
    parser.add_argument("--repo", required=True, metavar="ID", help="Hub repository, e.g. your-name/my-adapter")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--merged", action="store_true", help="upload the merged model instead of the adapter")
    parser.add_argument("--base-model", metavar="ID",
                        help="the base model's Hub id for the card (default: the run's model when it is a Hub id)")
    parser.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the per-user data folder)")


def run(args: argparse.Namespace) -> int:
    from tuneplan.config import load_config
    from tuneplan.errors import UserError
    from tuneplan.events import CONFIG_FILE
    from tuneplan.services import hub_push, paths, runs

    hub_push.check_repo_id(args.repo)  # before anything is merged
    run_dir = runs.find_run(args.run, paths.runs_root(args.runs_dir))
    config = load_config(run_dir / CONFIG_FILE)
    merged_dir = None
    if args.merged:
        if config.setup.method == "full":
            raise UserError(f"run {run_dir.name} is a full fine-tune: push it without --merged")
        merged_dir = run_dir / "merged"
        if not (merged_dir / "config.json").is_file():
            from tuneplan.training.inference import export_merged

            merged_dir = export_merged(run_dir, merged_dir)
            print(f"merged into the 16-bit base: {merged_dir}")
    result = hub_push.push(run_dir, args.repo, private=args.private, merged_dir=merged_dir,
                           base_model=args.base_model)
    print(f"pushed {len(result.files)} files to {result.url}{' (private)' if args.private else ''}")
    print(f"  commit: {result.commit_url}")
    if result.skipped:
        print(f"  skipped {len(result.skipped)}: {', '.join(result.skipped)}")
    return 0
