"""`tuneplan export RUN --format ollama|vllm|safetensors`: make a run's result servable.

- `safetensors` (also `--merge`, as before): the adapter merged into a 16-bit base, written as
  safetensors with the tokenizer (default folder `RUN/merged`).
- `ollama`: the same merged model plus a `Modelfile` (the run's chat template as an Ollama
  TEMPLATE, stop words) in `RUN/ollama`, and the `ollama create` / `ollama run` commands.
- `vllm`: nothing is merged; prints the `vllm serve BASE --enable-lora ...` line that serves
  the adapter as is.

A QLoRA run's adapter is always merged into a freshly loaded 16-bit base, never into the
4-bit one it trained against (merging into 4-bit weights would round the merged weights to
4 bits). RAM and disk are checked first; an existing folder is never overwritten.
"""

from __future__ import annotations

import argparse

FORMATS = ("safetensors", "ollama", "vllm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", help="run name or folder (default: the newest run)")
    parser.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the per-user data folder)")
    parser.add_argument("--format", choices=FORMATS,
                        help="safetensors: merged model; ollama: merged model + Modelfile; vllm: the serve command")
    parser.add_argument("--merge", action="store_true", help="merge the adapter into the base model "
                        "(the same as --format safetensors)")
    parser.add_argument("--out", help="output folder (default: RUN/merged, RUN/ollama for --format ollama)")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto",
                        help="dtype of the merged weights (auto: the run's 16-bit compute dtype, else bfloat16)")
    parser.add_argument("--name", help="model name in Ollama / vLLM (default: the run's name)")
    parser.add_argument("--quantize", default="q4_K_M", metavar="Q",
                        help="Ollama quantization for `ollama create -q` (default q4_K_M; `none` to keep 16-bit)")


def _merge_note(config, dtype: str) -> str:
    if config.setup.method == "qlora":
        return (f"merged into a freshly loaded 16-bit base ({dtype}), not into the 4-bit base the QLoRA adapter "
                "trained against: merging into 4-bit weights would round the result to 4 bits")
    return f"merged into the {dtype} base"


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuneplan.config import load_config
    from tuneplan.errors import UserError
    from tuneplan.events import ADAPTER_DIR, CONFIG_FILE, MODEL_DIR
    from tuneplan.services import paths, runs

    fmt = args.format or ("safetensors" if args.merge else None)
    if fmt is None:
        raise UserError("export needs --format ollama|vllm|safetensors (or --merge, the same as --format safetensors)")
    if args.merge and fmt != "safetensors":
        raise UserError(f"--merge is --format safetensors; give one of --merge or --format {fmt}")
    if args.out is not None:
        from tuneplan.errors import check_path
        from tuneplan.training.inference import check_out_folder

        check_out_folder(Path(check_path(args.out, "--out")).expanduser())
    run_dir = runs.find_run(args.run, paths.runs_root(args.runs_dir))
    from tuneplan.events import Failure, read_status

    status = read_status(run_dir)
    if status is not None and status.phase == "failed" and status.failure is Failure.NON_FINITE:
        raise UserError(f"run {run_dir.name} failed with {(status.error or 'a non-finite loss').split(':')[0]}: its "
                        "weights are not numbers, there is nothing to export")
    config = load_config(run_dir / CONFIG_FILE)
    name = args.name or run_dir.name.lower()
    from tuneplan.training import export_formats
    from tuneplan.training.inference import _adapter_dir, export_merged, merged_dtype

    if fmt == "vllm":
        weights, note = _adapter_dir(run_dir, config)
        if note:
            print(f"tuneplan: {note}")
        s = config.setup
        # no --max-model-len: vLLM serves the model's own context (its config.json); the training
        # length is said, not imposed (a prompt longer than it is still one the base model reads)
        context = export_formats.model_context(weights if s.method == "full" else config.model.source)
        if s.method == "full":
            cmd = export_formats.vllm_command(str(weights.resolve()), None, name, None,
                                              trust_remote_code=config.model.trust_remote_code)
            print(f"a full fine-tune needs no adapter; serve the model folder {weights}:")
        else:
            try:
                cmd = export_formats.vllm_command(config.model.source, weights, name, s.lora_rank,
                                                  trust_remote_code=config.model.trust_remote_code)
            except ValueError as exc:
                raise UserError(str(exc)) from None
            print(f"serve the adapter as is ({weights}) on its base model {config.model.source}:")
            if s.method == "qlora":
                print("  (a QLoRA adapter: vLLM serves it on the 16-bit base, not the 4-bit one it trained against)")
        print(f"  {cmd}")
        ctx = f"the model's context, {context:,} tokens" if context else "the model's context (its config.json)"
        print(f"  (vLLM serves up to {ctx}; this run trained on sequences of up to {s.seq_len:,} tokens; add "
              f"--max-model-len {s.seq_len} to cap requests at that)")
        if s.method != "full":
            import json
            import shlex

            body = json.dumps({"model": name, "messages": [{"role": "user", "content": "Hello"}]})
            print(f"  then ask for model {json.dumps(name)}: curl localhost:8000/v1/chat/completions "
                  f"-H 'Content-Type: application/json' -d {shlex.quote(body)}")
        return 0

    if fmt == "ollama" and config.setup.method == "full":
        weights = run_dir / MODEL_DIR
        from tuneplan.training.inference import check_out_folder

        out = Path(args.out) if args.out else run_dir / "ollama"
        check_out_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        merged_msg = (f"a full fine-tune: the Modelfile points at {weights} by a relative path (keep the two "
                      "folders together)")
    else:
        default = run_dir / ("ollama" if fmt == "ollama" else "merged")
        weights = out = export_merged(run_dir, args.out or default, dtype=args.dtype)
        merged_msg = f"{_merge_note(config, merged_dtype(config, args.dtype))}; written to {out}"
    print(f"merged model written to {out}" if fmt == "safetensors" else merged_msg)
    if fmt == "safetensors":
        if config.setup.method == "qlora":
            print(f"  ({_merge_note(config, merged_dtype(config, args.dtype))})")
        return 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(weights if (weights / "tokenizer_config.json").exists()
                                              else run_dir / ADAPTER_DIR)
    modelfile, note = export_formats.write_modelfile(out, weights, tokenizer)
    if note:
        print(f"tuneplan: {note}")
    quantize = None if args.quantize in ("none", "") else args.quantize
    print(f"Modelfile: {modelfile} (the run's chat template as an Ollama TEMPLATE)")
    print("import it into Ollama (its safetensors import takes Llama, Mistral, Gemma and Phi-3 architectures; "
          "quantized by -q):")
    for line in export_formats.ollama_commands(out, name, quantize=quantize):
        print(f"  {line}")
    return 0
