"""After training: talk to a run's adapter, or merge it into a 16-bit base for serving.

`load_chat_model(run_dir)` loads the base model plus the adapter (`PeftModel.from_pretrained`)
with the tokenizer saved next to the adapter (it carries the chat template the run trained
with). `export_merged(run_dir, out)` reloads the base in 16 bits (for a QLoRA run too: the
adapter is merged into a freshly loaded 16-bit base, never into the 4-bit one), merges and
writes safetensors, after checking RAM and disk.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tuneplan.config import RunConfig, load_config
from tuneplan.errors import UserError
from tuneplan.events import ADAPTER_DIR, CONFIG_FILE, MODEL_DIR, last_checkpoint
from tuneplan.files import format_bytes


def _adapter_dir(run_dir: Path, config: RunConfig) -> tuple[Path, str | None]:
    """(folder with the trained weights, a note when it is a checkpoint rather than the final save)."""
    final = run_dir / (MODEL_DIR if config.setup.method == "full" else ADAPTER_DIR)
    if final.is_dir():
        return final, None
    ckpt = last_checkpoint(run_dir)
    if ckpt is not None:
        return ckpt, f"the run has no final save yet; using {ckpt.name}"
    raise UserError(f"run {run_dir.name} has no adapter and no checkpoint yet; wait for its first checkpoint")


LIBRARIES = r"(transformers|peft|torch|accelerate|bitsandbytes|trl|huggingface_hub)(\.|$)"
"""Modules whose FutureWarning / DeprecationWarning lines are theirs to fix, not the user's."""


def _quiet() -> None:
    """No progress bars, log chatter or the libraries' own deprecation notices in `chat` and
    `export` output (our own warnings still show)."""
    import warnings

    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARIES)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_chat_model(run_dir: Path):
    """(model, tokenizer, notes) ready for generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet()
    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    weights, note = _adapter_dir(run_dir, config)
    notes = [note] if note else []
    device = _device()
    from tuneplan.training.modeling import bnb_config, torch_dtype

    # CPU: float32 (bf16 matmuls are slow there); CUDA: the run's compute dtype, 4-bit for QLoRA.
    dtype = torch_dtype(config.setup.compute_dtype) if device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(weights)
    model: torch.nn.Module  # the full model, or the adapter on its base (a PeftModel)
    if config.setup.method == "full":
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype, device_map={"": device})
    else:
        from peft import PeftModel

        kwargs = {"dtype": dtype, "device_map": {"": device}, "trust_remote_code": config.model.trust_remote_code}
        if config.setup.method == "qlora" and device.type == "cuda":
            kwargs["quantization_config"] = bnb_config(config.setup)
        base = AutoModelForCausalLM.from_pretrained(config.model.source, **kwargs)
        model = PeftModel.from_pretrained(base, weights)
    model.eval()
    return model, tokenizer, notes


def reply(model, tokenizer, messages: list[dict], *, max_new_tokens: int = 128, temperature: float = 0.0) -> str:
    """The assistant's next turn for a conversation (the chat template's generation prompt)."""
    import torch

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    kwargs = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature)
    else:
        kwargs.update(do_sample=False)
    with torch.no_grad():
        out = model.generate(**inputs, **kwargs)
    return decode_whole_characters(tokenizer, out[0, inputs["input_ids"].shape[1]:].tolist()).strip()


def decode_whole_characters(tokenizer, ids: list[int]) -> str:
    """`ids` as text, invalid bytes shown as U+FFFD (the tokenizer's replacement), but without
    the replacement characters of a character cut at the last token boundary: a byte-level
    model stopped by max_new_tokens (or a partly trained one) can end halfway through a
    multi-byte UTF-8 character; those last bytes are dropped, not printed as `\ufffd`."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    # a UTF-8 character is at most 4 bytes, so at most the last 3 tokens can hold a cut one
    for cut in range(1, min(3, len(ids)) + 1):
        if not text.endswith("\ufffd"):
            break
        shorter = tokenizer.decode(ids[:-cut], skip_special_tokens=True)
        if not shorter.endswith("\ufffd"):
            return shorter
    return text


def available_ram_bytes() -> int | None:
    """RAM available now (`tuneplan.services.gpu.ram_bytes`, psutil), or None when unknown."""
    from tuneplan.services.gpu import ram_bytes

    try:
        return ram_bytes()[1]
    except (OSError, RuntimeError):
        return None


def merged_size_bytes(config: RunConfig, dtype_bytes: int) -> int | None:
    """Size of the merged model: its parameter count (planner, from config.json) x dtype bytes."""
    path = Path(config.model.source) / "config.json"
    cfg = None
    if path.is_file():
        cfg = json.loads(path.read_text(encoding="utf-8"))
    else:
        from planner import catalog

        entry = catalog.find(config.model.source) or next(
            (e for e in catalog.entries() if e.hub_id == config.model.source), None)
        cfg = dict(entry.config) if entry else None
    if cfg is None:
        return None
    from planner.spec import spec_from_config

    try:
        return spec_from_config(cfg, config.model.source).parameter_count() * dtype_bytes
    except Exception:
        return None


def merged_dtype(config: RunConfig, dtype: str = "auto") -> str:
    """The dtype name a merge writes: the one asked for, else the run's 16-bit compute dtype
    (float16 runs stay float16), else bfloat16."""
    return dtype if dtype != "auto" else ("float16" if config.setup.compute_dtype == "float16" else "bfloat16")


def export_merged(run_dir: Path, out: Path | None = None, *, dtype: str = "auto", free_bytes=None,
                  ram_bytes=None) -> Path:
    """Merge the run's adapter into a freshly loaded 16-bit base and write it to `out`
    (default `RUN/merged`). Refuses to overwrite, and checks RAM and disk first."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneplan.services.paths import free_bytes as disk_free

    _quiet()
    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    if config.setup.method == "full":
        from tuneplan.events import MODEL_DIR, effective_phase, read_status

        if (run_dir / MODEL_DIR / "config.json").is_file():
            raise UserError(f"run {run_dir.name} is a full fine-tune: its model/ folder is already a merged model")
        raise UserError(f"run {run_dir.name} is a full fine-tune that saved no model/ folder "
                        f"({effective_phase(read_status(run_dir))}): nothing to export; resume it with "
                        f"`tuneplan resume {run_dir.name}` or train again")
    adapter, note = _adapter_dir(run_dir, config)
    if note:
        print(f"tuneplan: {note}")
    out = Path(out) if out else run_dir / "merged"
    check_out_folder(out)
    name = merged_dtype(config, dtype)
    torch_dt = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]
    size = merged_size_bytes(config, torch.finfo(torch_dt).bits // 8)
    if size is not None:
        ram = available_ram_bytes() if ram_bytes is None else ram_bytes
        # The base is loaded once in 16 bits and merged in place; the adapter and buffers are small.
        if ram is not None and ram < size * 1.1:
            raise UserError(f"not enough free RAM to merge: {format_bytes(ram)} available, the {name} model "
                            f"needs about {format_bytes(size * 1.1)}")
        have = (free_bytes or disk_free)(_existing_parent(out))
        if have < size + 2**26:
            raise UserError(f"not enough disk space in {out.parent}: {format_bytes(have)} free, the merged "
                            f"model needs about {format_bytes(size + 2**26)}")
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(config.model.source, dtype=torch_dt, device_map={"": "cpu"},
                                                trust_remote_code=config.model.trust_remote_code)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # a folder of our own, named uniquely beside `out` (same file system, so the rename is
        # atomic): a user's `.NAME.partial` is never touched, and a long NAME still fits
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name[:64]}.", suffix=".partial", dir=out.parent))
    except OSError as exc:
        raise UserError(f"cannot write to {out.parent}: {exc.strerror or exc}; pass another --out") from None
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(adapter).save_pretrained(tmp)
        (tmp / "README.md").write_text(
            f"# {run_dir.name} (merged)\n\n`{config.model.source}` with the LoRA adapter of run `{run_dir.name}` "
            f"merged in, {name}, written by `tuneplan export --merge`.\n", encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = _write_failure(exc)
        if reason is not None:
            raise UserError(f"writing the merged model to {out} failed ({reason}); nothing was left behind: "
                            "free space or pass another --out") from None
        raise
    return out


def check_out_folder(out: Path) -> None:
    """Refuse (one line) an export folder that is a symlink, a file, or a folder with files in
    it: the export writes a new folder and never writes through a link or over a user's files."""
    if out.is_symlink():
        raise UserError(f"{out} is a symlink; pass a new folder as --out (the export never writes through a link)")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder: pass a new folder as --out")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty; pass another --out")


def _existing_parent(path: Path) -> Path:
    """`path` or its nearest existing parent folder (where free space is measured)."""
    for p in (path, *path.parents):
        if p.is_dir():
            return p
    return Path(".")


def _write_failure(exc: BaseException) -> str | None:
    """What went wrong when a write failed because of the disk, in words (None for anything
    else). safetensors and torch report I/O errors as their own exceptions, with the OS error
    in the text (`IoError(Os { code: 28, kind: StorageFull, ... })`)."""
    import errno as errno_

    names = {errno_.ENOSPC: "ENOSPC: no space left on the device", errno_.EDQUOT: "EDQUOT: disk quota exceeded",
             errno_.EROFS: "EROFS: read-only file system", errno_.EFBIG: "EFBIG: file too large",
             errno_.ENAMETOOLONG: "ENAMETOOLONG: file name too long", errno_.EACCES: "EACCES: permission denied"}
    if isinstance(exc, OSError):
        return names.get(exc.errno or 0, exc.strerror or str(exc))
    if isinstance(exc, Exception):
        text = str(exc)
        for code, words in names.items():
            if f"code: {code}," in text or os.strerror(code) in text:
                return words
    return None
