"""A quick look at a dataset before training: format, a few rendered samples, token lengths.

Runs in the UI process, so it never imports torch, transformers or datasets: local
JSONL/JSON/CSV are read with the standard library, Parquet with `pyarrow` when installed,
and a Hub dataset by downloading one of its data files through `huggingface_hub` (the Hub
boundary is the injectable `HubFiles`). Format detection and rendering to chat messages are
the training code's own (`tuneplan.dataset_formats`), so the preview shows exactly
what training will see.

Token counts use the model's own tokenizer (`tokenizer.json` through the `tokenizers`
library: a local model folder's file, or the one file fetched from the Hub, never weights).
Without it the counts are estimated at ~4 characters per token and marked approximate.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from tuneplan.errors import UserError, check_path
from tuneplan.dataset_formats import (
    check_text, json_error, jsonl_lines, open_dataset, read_json_dataset, reading_errors,
)

MAX_ROWS = 5000
"""Rows read for the statistics (the count of a larger local JSONL/CSV is still exact)."""
CANDIDATE_SEQ_LENS = (512, 1024, 2048, 4096, 8192)
"""Default sequence lengths whose truncation share is shown (see `candidate_seq_lens`)."""


def candidate_seq_lens(max_len: int, n: int = 5) -> tuple[int, ...]:
    """`n` powers of two ending at the first one >= `max_len` (none below 16): the sequence
    lengths worth comparing for this data."""
    top = 16
    while top < max_len:
        top *= 2
    out = [top >> i for i in range(n) if (top >> i) >= 16]
    return tuple(sorted(out))
CHARS_PER_TOKEN = 4.0
"""Fallback estimate without a tokenizer: ~4 characters per token for English text
(OpenAI's rule of thumb, https://platform.openai.com/tokenizer)."""
TEMPLATE_TOKENS_PER_MESSAGE = 4
"""Role/separator tokens a chat template adds around each message (Llama-3: 4-5 per
message, ChatML: 4-5); added to content tokens since the template itself is not run here."""
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class HubFiles(Protocol):
    """The Hub boundary: list a repo's files and download one (tests inject a fake)."""

    def list_files(self, repo_id: str, repo_type: str) -> list[str]: ...

    def download(self, repo_id: str, filename: str, repo_type: str) -> Path: ...


class RealHubFiles:
    """`huggingface_hub` behind the HubFiles boundary (honours HF_TOKEN / HF_HUB_OFFLINE)."""

    def list_files(self, repo_id: str, repo_type: str) -> list[str]:
        """The repo's files, smallest first (a preview downloads one: the smallest will do)."""
        from huggingface_hub import HfApi

        from tuneplan.services.hub import hub_offline_mode, offline_reason

        reason = None if hub_offline_mode() else offline_reason()
        if reason:  # listing needs the network: fail now, not after the library's retries
            raise HubConnectionError(reason)

        items = HfApi().list_repo_tree(repo_id, repo_type=repo_type, recursive=True)
        files = [(getattr(i, "size", None) or 0, i.path) for i in items if hasattr(i, "size")]
        return [path for _, path in sorted(files)]

    def download(self, repo_id: str, filename: str, repo_type: str) -> Path:
        from huggingface_hub import hf_hub_download

        from tuneplan.services.hub import hub_offline_mode, offline_reason

        no_network = not hub_offline_mode() and offline_reason() is not None
        # no network: the local cache only (a LocalEntryNotFoundError when it is not there)
        return Path(hf_hub_download(repo_id, filename, repo_type=repo_type, local_files_only=no_network))


class HubConnectionError(ConnectionError):
    """The Hub cannot be reached (no network), found before any request was made."""


@dataclass(frozen=True)
class TokenStats:
    """Token lengths of rendered samples."""

    count: int
    """Samples measured."""
    p50: int
    p90: int
    p99: int
    max: int
    mean: float
    histogram: tuple[tuple[int, int, int], ...]
    """(low, high, samples) bins of token length, low inclusive, high exclusive."""
    truncated_share: tuple[tuple[int, float], ...]
    """(seq_len, share of samples longer than seq_len) for candidate sequence lengths."""
    exact: bool
    """True when counted with the model's tokenizer, False for the character estimate."""
    method: str
    """How counts were made, in words (shown to the user)."""
    total_tokens: int
    """Sum over the measured samples."""


@dataclass(frozen=True)
class DatasetPreview:
    """What the wizard shows about a dataset."""

    source: str
    """The path or Hub id the user gave."""
    format: str
    """Detected format name (e.g. `messages`, `alpaca`)."""
    columns: tuple[str, ...]
    num_examples: int | None
    """Examples in the file/split; None when unknown."""
    count_exact: bool
    """False when `num_examples` only counts the rows read."""
    samples: tuple[tuple[tuple[str, str], ...], ...]
    """Up to three samples, each as (role, content) chat messages."""
    tokens: TokenStats | None
    notes: tuple[str, ...] = ()


# -- loading rows ------------------------------------------------------------------------

def _read_rows(path: Path, limit: int) -> tuple[list[dict[str, Any]], int | None, bool]:
    """(rows up to `limit`, total rows if known, whether total is exact)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows: list[dict[str, Any]] = []
        total = 0
        with open_dataset(path) as f:  # a regular file only; each line read with a bound
            for lineno, line in jsonl_lines(f, str(path)):
                if not line.strip():
                    continue
                total += 1
                if len(rows) < limit:
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise UserError(f"{path}: line {lineno} is not valid JSON ({json_error(exc)}); fix or remove it") from None
                    if not isinstance(obj, dict):
                        raise UserError(f"{path}: line {lineno} is not a JSON object")
                    rows.append(obj)
        return rows, total, True
    if suffix == ".json":
        try:
            with open_dataset(path) as f:
                data = read_json_dataset(f, str(path))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {exc.lineno} is not valid JSON ({json_error(exc)})") from None
        if isinstance(data, dict):
            # {"data": [...]} / {"train": [...]} style: take the first list of objects
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if lists else [data]
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of objects")
        rows = [r for r in data if isinstance(r, dict)]
        return rows[:limit], len(rows), True
    if suffix == ".csv":
        rows, total = [], 0
        import io

        with open_dataset(path) as binary, io.TextIOWrapper(binary, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                total += 1
                if len(rows) < limit:
                    rows.append(dict(row))
        return rows, total, True
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        open_dataset(path).close()  # a regular file (pyarrow would read a FIFO or device)
        pf = pq.ParquetFile(path)
        total = pf.metadata.num_rows
        rows = []
        for batch in pf.iter_batches(batch_size=min(limit, 1024)):
            rows.extend(batch.to_pylist())
            if len(rows) >= limit:
                break
        return rows[:limit], total, True
    raise UserError(f"{path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(DATA_SUFFIXES)}")


def _hub_data_file(repo_id: str, hub: HubFiles) -> tuple[Path, str]:
    try:
        files = hub.list_files(repo_id, "dataset")
    except Exception as exc:  # the Hub's own errors: name what went wrong in one line
        raise UserError(hub_error(repo_id, exc)) from None
    data = [f for f in files if f.lower().endswith(DATA_SUFFIXES) and not f.startswith(".")]
    if not data:
        raise UserError(f"dataset {repo_id}: no .jsonl/.json/.csv/.parquet data file in the repo")
    # Prefer a train split; otherwise keep the boundary's order (the real Hub lists smallest first).
    data.sort(key=lambda f: 0 if "train" in f.lower() else 1)
    try:
        return hub.download(repo_id, data[0], "dataset"), data[0]
    except Exception as exc:
        raise UserError(hub_error(repo_id, exc)) from None


def hub_error(repo_id: str, exc: Exception) -> str:
    name = type(exc).__name__
    if "Gated" in name:
        return f"dataset {repo_id} is gated: accept its terms on huggingface.co and set HF_TOKEN"
    if any(k in name for k in ("Offline", "Connect", "Timeout", "LocalEntryNotFound", "NetworkError")):
        from tuneplan.services.hub import hub_offline_mode, offline_fix

        set_offline = "Offline" in name or ("LocalEntry" in name and hub_offline_mode())
        why = "HF_HUB_OFFLINE is set" if set_offline else "the Hugging Face Hub cannot be reached"
        return f"dataset {repo_id}: offline ({why}) and not in the local Hub cache; {offline_fix('a local file')}"
    if "RepositoryNotFound" in name or "NotFound" in name:
        return f"dataset {repo_id} not found on the Hub (check the id, or set HF_TOKEN if it is private)"
    return f"dataset {repo_id}: {name}: {exc}".splitlines()[0]


# -- tokenizer ---------------------------------------------------------------------------

def load_tokenizer(model_source: str | None, hub: HubFiles | None) -> tuple[Callable[[str], int] | None, str | None]:
    """(token counter, None) from the model's `tokenizer.json`, or (None, why not)."""
    if not model_source:
        return None, "no model chosen"
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None, "the tokenizers library is not installed"
    path: Path | None = None
    folder = Path(model_source).expanduser()
    if folder.is_dir():
        candidate = folder / "tokenizer.json"
        if not candidate.is_file():
            return None, f"{folder} has no tokenizer.json"
        path = candidate
    elif hub is not None and "/" in model_source:
        try:
            path = hub.download(model_source, "tokenizer.json", "model")
        except Exception as exc:
            return None, hub_error(model_source, exc).replace("dataset ", "tokenizer of ").replace(
                "a local file", "a local model folder")
    else:
        return None, f"no tokenizer.json for {model_source}"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:
        return None, f"tokenizer.json unreadable ({type(exc).__name__})"
    return (lambda text: len(tok.encode(text, add_special_tokens=False).ids)), None


# -- statistics --------------------------------------------------------------------------

def _percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile (q in 0..100)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def token_stats(lengths: Iterable[int], *, exact: bool, method: str, bins: int = 8,
                seq_lens: Iterable[int] | None = None) -> TokenStats | None:
    values = sorted(int(v) for v in lengths)
    if not values:
        return None
    top = values[-1]
    if seq_lens is None:
        seq_lens = candidate_seq_lens(top)
    # Bin edges on a "nice" width so labels read well.
    raw = max(1, math.ceil((top + 1) / bins))
    magnitude = 10 ** max(0, len(str(raw)) - 1)
    width = math.ceil(raw / magnitude) * magnitude
    hist = []
    i = 0
    for b in range(bins):
        lo, hi = b * width, (b + 1) * width
        n = 0
        while i < len(values) and values[i] < hi:
            n += 1
            i += 1
        hist.append((lo, hi, n))
        if i >= len(values):
            break
    n = len(values)
    trunc = tuple((s, sum(1 for v in values if v > s) / n) for s in seq_lens)
    return TokenStats(
        count=n, p50=_percentile(values, 50), p90=_percentile(values, 90),
        p99=_percentile(values, 99), max=top, mean=sum(values) / n, histogram=tuple(hist),
        truncated_share=trunc, exact=exact, method=method, total_tokens=sum(values),
    )


def _render(rows: list[dict[str, Any]], source: str) -> tuple[str, list[list[tuple[str, str]]]]:
    """(format name, rows as (role, content) lists) through the training code's formats."""
    from tuneplan import dataset_formats as formats

    fmt, chats = formats.preview_rows(rows, limit=len(rows))
    return fmt, [[(str(m.get("role", "")), _content(m.get("content"))) for m in chat] for chat in chats]


def _content(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # multimodal-style content parts: keep the text ones
        return "\n".join(str(p.get("text", "")) for p in value if isinstance(p, dict))
    return "" if value is None else str(value)


def preview_dataset(source: str, *, model_source: str | None = None, hub: HubFiles | None = None,
                    limit: int = MAX_ROWS) -> DatasetPreview:
    """Load a few rows of `source` (local file or Hub dataset id) and measure token lengths
    with `model_source`'s tokenizer when obtainable. Raises UserError with one line."""
    source = source.strip()
    if not source:
        raise UserError("dataset: give a local .jsonl/.json/.csv/.parquet file or a Hub dataset id")
    from tuneplan.services.bundled import dataset_path

    source = dataset_path(source)  # the bundled sample, as `train` and `compare` take it
    path = Path(check_path(source, "the dataset name")).expanduser()
    notes: list[str] = []
    if path.exists() or path.is_symlink():  # a FIFO or device too: open_dataset says what it is
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in DATA_SUFFIXES)
            if not files:
                raise UserError(f"{path}: no .jsonl/.json/.csv/.parquet file in this folder")
            path = next((p for p in files if "train" in p.name.lower()), files[0])
            notes.append(f"reading {path.name}")
    elif "/" in source and not source.startswith((".", "/", "~")) and source.count("/") == 1:
        path, name = _hub_data_file(source, hub or RealHubFiles())
        notes.append(f"previewing {name} from the Hub")
    else:
        raise UserError(f"dataset {source}: no such file; give a local file or a Hub id like org/name")
    with reading_errors(path):
        rows, total, exact_count = _read_rows(path, limit)
    for i, row in enumerate(rows, 1):
        check_text(row, f"{path} row {i}")
    if not rows:
        raise UserError(f"{path}: the dataset is empty")
    fmt, conversations = _render(rows, source)
    counter, why = load_tokenizer(model_source, hub)
    texts = ["\n".join(content for _, content in conv) for conv in conversations]
    overhead = [TEMPLATE_TOKENS_PER_MESSAGE * len(conv) for conv in conversations]
    if counter is not None:
        lengths = [counter(t) + o for t, o in zip(texts, overhead)]
        method = "model tokenizer (+ chat-template markers, estimated)"
        exact = True
    else:
        lengths = [math.ceil(len(t) / CHARS_PER_TOKEN) + o for t, o in zip(texts, overhead)]
        method = f"approximate: ~{CHARS_PER_TOKEN:g} characters per token ({why})"
        exact = False
    if total is not None and total > len(rows):
        notes.append(f"token statistics over the first {len(rows)} of {total} examples")
    stats = token_stats(lengths, exact=exact, method=method)
    samples = tuple(tuple(conv) for conv in conversations[:3])
    return DatasetPreview(
        source=source, format=fmt, columns=tuple(rows[0].keys()), num_examples=total,
        count_exact=exact_count, samples=samples, tokens=stats, notes=tuple(notes),
    )


def format_histogram(stats: TokenStats, width: int = 30) -> list[str]:
    """Text histogram lines: `  0-  99 ████████ 120` (no colour needed)."""
    peak = max((n for _, _, n in stats.histogram), default=1) or 1
    lo_w = len(str(stats.histogram[-1][1] - 1)) if stats.histogram else 1
    out = []
    for lo, hi, n in stats.histogram:
        bar = "█" * max(0, round(width * n / peak))
        if n and not bar:
            bar = "▏"
        out.append(f"{lo:>{lo_w}}-{hi - 1:<{lo_w}} {bar} {n}")
    return out
