"""Dataset row formats: detect which one a dataset uses and turn its rows into chat messages.

Pure standard library (no `datasets` import): the wizard uses it on a few preview rows, the
training process on every row. Accepted formats, each named by the columns that identify it:

| format              | columns                            | trained on                     |
| ---                 | ---                                | ---                            |
| `messages`          | `messages` (list of role/content)  | every assistant turn (*)       |
| `prompt_completion` | `prompt`, `completion`             | the completion                 |
| `alpaca`            | `instruction`, `output` (+`input`) | the output                     |
| `sharegpt`          | `conversations` (from/value)       | every assistant turn (*)       |
| `text`              | `text`                             | every token                    |

Chat-like rows become a conversational prompt/completion pair (the prompt is every message
before the last assistant turn), so the loss covers completions only by default. (*) When a
dataset has conversations with several assistant turns and the tokenizer's chat template can
mark assistant spans (trl's `{% generation %}` markers, or a template trl knows how to patch),
the training process keeps whole conversations (`row_to_conversation`) and trains on every
assistant turn; otherwise only the last assistant turn is trained, and the run log says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, Literal

from tuneplan.errors import UserError
from tuneplan.files import FileRefused, open_binary

# format -> the columns that identify it (all required), in detection order: the first
# format whose columns are all present wins.
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
}
FORMATS = tuple(FORMAT_COLUMNS)
CHAT_FORMATS = ("messages", "sharegpt", "prompt_completion", "alpaca")
"""Formats whose loss covers completions only (by default)."""

FORMAT_SAMPLE_ROWS = 1000
"""Rows whose keys decide the format (a dataset's columns are the keys seen in them)."""

ROLES = ("system", "user", "assistant")
# ShareGPT speaker names -> chat roles (the common spellings found in published ShareGPT dumps).
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "bot": "assistant",
}

Message = dict[str, str]


class DatasetFormatError(UserError):
    """A dataset whose rows fit no accepted format, or a row that breaks its format."""


def accepted_formats_text() -> str:
    """One line listing the accepted formats by their columns."""
    return "; ".join(f"{name} ({', '.join(cols)})" for name, cols in FORMAT_COLUMNS.items())


def detect_format(columns: Iterable[str], *, source: str = "dataset") -> str:
    """The format that a dataset with these column names uses.

    Raises `DatasetFormatError` naming the columns found and the ones accepted."""
    found = list(columns)
    present = set(found)
    for name, required in FORMAT_COLUMNS.items():
        if all(c in present for c in required):
            return name
    shown = ", ".join(found) if found else "none"
    raise DatasetFormatError(
        f"{source}: columns ({shown}) fit no accepted format; accepted: {accepted_formats_text()}"
    )


def detect_format_of_rows(rows: Sequence[Mapping[str, Any]], *, source: str = "dataset") -> str:
    """Like `detect_format`, from rows (their keys, in first-seen order)."""
    if not rows:
        raise DatasetFormatError(f"{source} has no rows; add examples or pick another file")
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return detect_format(seen, source=source)


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise DatasetFormatError(f"{where}: {what} must be text (got {type(value).__name__})")
    return value


def _chat_messages(raw: Any, *, role_key: str, content_key: str, role_map: Mapping[str, str] | None,
                   column: str, where: str) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise DatasetFormatError(f"{where}: `{column}` must be a non-empty list of messages")
    messages: list[Message] = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or role_key not in item or content_key not in item:
            raise DatasetFormatError(
                f"{where}: `{column}[{i}]` must have `{role_key}` and `{content_key}` keys"
            )
        role = item[role_key]
        mapped = role_map.get(str(role).lower()) if role_map is not None else role
        if mapped not in ROLES:
            allowed = sorted(role_map) if role_map is not None else list(ROLES)
            raise DatasetFormatError(
                f"{where}: `{column}[{i}].{role_key}` is {role!r}; accepted: {', '.join(allowed)}"
            )
        messages.append({"role": mapped, "content": _text(item[content_key], f"`{column}[{i}].{content_key}`", where)})
    return messages


def row_to_messages(row: Mapping[str, Any], fmt: str, *, where: str = "row") -> list[Message] | None:
    """The row as a chat (list of {role, content}); `None` for the `text` format."""
    if fmt == "messages":
        return _chat_messages(row.get("messages"), role_key="role", content_key="content",
                              role_map=None, column="messages", where=where)
    if fmt == "sharegpt":
        return _chat_messages(row.get("conversations"), role_key="from", content_key="value",
                              role_map=SHAREGPT_ROLES, column="conversations", where=where)
    if fmt == "prompt_completion":
        prompt = _text(row.get("prompt"), "`prompt`", where)
        completion = _text(row.get("completion"), "`completion`", where)
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if fmt == "alpaca":
        instruction = _text(row.get("instruction"), "`instruction`", where)
        extra = row.get("input") or ""
        extra = _text(extra, "`input`", where)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return [{"role": "user", "content": prompt},
                {"role": "assistant", "content": _text(row.get("output"), "`output`", where)}]
    if fmt == "text":
        return None
    raise ValueError(f"unknown dataset format {fmt!r}; known: {', '.join(FORMATS)}")


def row_to_training_example(row: Mapping[str, Any], fmt: str, *, where: str = "row") -> dict[str, Any]:
    """The row in the shape trl's SFTTrainer takes.

    Chat-like formats -> conversational prompt/completion: `{"prompt": [messages before the
    last assistant turn], "completion": [that turn]}` (the loss covers the completion).
    `text` -> `{"text": ...}` (language modelling, loss on every token)."""
    if fmt == "text":
        return {"text": _text(row.get("text"), "`text`", where)}
    messages = row_to_messages(row, fmt, where=where)
    assert messages is not None
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DatasetFormatError(f"{where}: the conversation has no assistant turn to train on")
    if last == 0:
        raise DatasetFormatError(f"{where}: the conversation starts with the assistant turn (no prompt before it)")
    return {"prompt": messages[:last], "completion": [messages[last]]}


def row_to_conversation(row: Mapping[str, Any], fmt: str, *, where: str = "row") -> dict[str, Any]:
    """A chat-like row as a whole conversation, `{"messages": [...]}` (trl's conversational
    language-modelling shape, for assistant-only loss on every assistant turn)."""
    example = row_to_training_example(row, fmt, where=where)  # validates: an assistant turn after a prompt
    messages = row_to_messages(row, fmt, where=where)
    assert messages is not None and "prompt" in example
    return {"messages": messages}


def assistant_turns(row: Mapping[str, Any], fmt: str) -> int:
    """Assistant turns in a chat-like row (0 for `text`)."""
    messages = row_to_messages(row, fmt) if fmt != "text" else None
    return sum(1 for m in messages or () if m["role"] == "assistant")


def preview_rows(rows: Sequence[Mapping[str, Any]], *, source: str = "dataset", limit: int = 3) -> tuple[str, list[list[Message]]]:
    """(format, up to `limit` rows as chats) for a preview; `text` rows appear as one user turn."""
    fmt = detect_format_of_rows(rows, source=source)
    shown = []
    for i, row in enumerate(rows[:limit]):
        messages = row_to_messages(row, fmt, where=f"{source} row {i + 1}")
        shown.append(messages if messages is not None else [{"role": "user", "content": row.get("text", "")}])
    return fmt, shown


# --- local files (pure readers: the launcher's preflight and the wizard's preview) -------------

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def is_local_source(source: str) -> bool:
    """Whether a dataset source names a local file (by suffix or existence) rather than a Hub id."""
    import os

    return source.lower().endswith(LOCAL_SUFFIXES) or os.path.exists(os.path.expanduser(source))


class reading_errors:
    """Turn what a corrupt data file raises while it is read into one-line
    `DatasetFormatError`s: bytes that are not UTF-8 (a binary file), JSON nested deeper than
    the parser's recursion limit, a Parquet file without Parquet's magic bytes (pyarrow's
    `ArrowInvalid` is a `ValueError`), an unreadable file."""

    def __init__(self, path: Any):
        self.name = str(path)

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, UserError):
            return False
        if isinstance(exc, UnicodeDecodeError):
            why = f"not UTF-8 text (byte {exc.start}): is it a binary file?"
        elif isinstance(exc, RecursionError):
            why = "JSON nested too deeply to read"
        elif isinstance(exc, OSError):
            why = f"cannot read it ({exc.strerror or exc})"
        elif isinstance(exc, ValueError):
            why = f"not a readable data file ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
        else:
            return False
        raise DatasetFormatError(f"{self.name[-200:]}: {why}") from None


def check_text(row: Any, where: str) -> None:
    """Refuse strings that cannot be UTF-8 encoded (a lone surrogate such as "\\ud800" from a
    JSON escape): tokenizers take str only as valid Unicode and fail later without a location."""
    if isinstance(row, str):
        try:
            row.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DatasetFormatError(f"{where}: text with an invalid character ({exc.reason}, "
                                     f"{row[exc.start]!r}); fix or delete it") from None
    elif isinstance(row, Mapping):
        for value in row.values():
            check_text(value, where)
    elif isinstance(row, (list, tuple)):
        for value in row:
            check_text(value, where)


DATASET_LINE_MAX_BYTES = 16 << 20
"""Longest JSONL line read: one training example is at most a few hundred KB of text (128k
tokens is about 0.5 MB), so a longer line is not an example (a file of one 50 MB line, or a
binary file with no newline) and is refused before it fills memory."""
DATASET_JSON_MAX_BYTES = 1 << 30
"""Largest `.json` dataset parsed whole (the json module holds the text and every object at
once, several times the file's size); larger datasets belong in JSONL, read line by line."""


def open_dataset(path: str | os.PathLike) -> IO[bytes]:
    """A local dataset file opened for reading, only if it is a regular file: a FIFO (which
    would block the read forever) or a device such as /dev/zero (which never ends) is refused
    in one line."""
    try:
        return open_binary(path)
    except FileNotFoundError:
        raise DatasetFormatError(f"dataset file {os.fspath(path)!r} does not exist") from None
    except FileRefused as exc:
        raise DatasetFormatError(f"dataset {os.fspath(path)!r} {exc.strerror}; give a .jsonl, .json, .csv or "
                                 ".parquet file") from None


def jsonl_lines(f: IO[bytes], name: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a JSONL file, each read with a bound
    (`DATASET_LINE_MAX_BYTES` characters: a longer line is refused in one line naming it).
    Decoded as UTF-8 a block at a time, as a text file is: a binary file fails at its first
    block, not at its first line break."""
    import io

    text = io.TextIOWrapper(f, encoding="utf-8")
    lineno = 0
    while True:
        line = text.readline(DATASET_LINE_MAX_BYTES + 1)
        if not line:
            return
        lineno += 1
        if len(line) > DATASET_LINE_MAX_BYTES:
            raise DatasetFormatError(f"{name} line {lineno}: longer than {DATASET_LINE_MAX_BYTES >> 20} MiB, "
                                     "which no training example is; split it into one example per line")
        yield lineno, line


def read_json_dataset(f: IO[bytes], name: str) -> Any:
    """A whole `.json` dataset, refused in one line above `DATASET_JSON_MAX_BYTES`."""
    size = os.fstat(f.fileno()).st_size
    if size > DATASET_JSON_MAX_BYTES:
        raise DatasetFormatError(f"{name}: {size / (1 << 30):.1f} GiB is too large to parse as one JSON document "
                                 f"(the limit is {DATASET_JSON_MAX_BYTES >> 30} GiB); convert it to JSONL, one "
                                 "example per line")
    return json.loads(f.read(DATASET_JSON_MAX_BYTES + 1).decode("utf-8"))


def read_local_rows(path: str, *, limit: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """`_read_local_rows`, with corrupt files and invalid text as one-line errors."""
    with reading_errors(path):
        rows = _read_local_rows(path, limit=limit)
    for where, row in rows:
        check_text(row, where)
    return rows


def _read_local_rows(path: str, *, limit: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a local JSONL/JSON/CSV file as `(location, row)` pairs, where location reads
    `data.jsonl line 12` (for error messages). Parquet needs pyarrow: returns `[]` (the
    training process reads it through `datasets`). Raises `DatasetFormatError` for a missing
    file, a corrupt JSONL line (with its line number) or JSON that is not a list of objects."""
    import csv
    import os

    path = os.path.expanduser(path)
    name = os.path.basename(path)
    suffix = os.path.splitext(path)[1].lower()
    rows: list[tuple[str, dict[str, Any]]] = []
    if suffix == ".parquet":  # the file format puts "PAR1" at both ends (parquet-format README, "File format")
        with open_dataset(path) as f:
            head = f.read(4)
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4))
            if head != b"PAR1" or f.read(4) != b"PAR1":
                raise DatasetFormatError(f"{name}: not a Parquet file (no PAR1 magic bytes at its start and end)")
        return rows
    with open_dataset(path) as binary:
        if suffix == ".csv":
            import io

            text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
            for i, row in enumerate(csv.DictReader(text), start=2):  # line 1 is the header
                rows.append((f"{name} line {i}", dict(row)))
                if limit is not None and len(rows) >= limit:
                    break
            return rows
        if suffix == ".json":
            try:
                data = read_json_dataset(binary, name)
            except json.JSONDecodeError as exc:
                raise DatasetFormatError(f"{name} line {exc.lineno}: not valid JSON ({json_error(exc)})") from None
            if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
                data = next(iter(data.values()))  # {"data": [...]}
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise DatasetFormatError(f"{name}: expected a JSON list of objects (one per example)")
            return [(f"{name} item {i + 1}", r) for i, r in enumerate(data[:limit] if limit else data)]
        for lineno, line in jsonl_lines(binary, name):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetFormatError(
                    f"{name} line {lineno}: not valid JSON ({json_error(exc)}); fix or delete that line") from None
            if not isinstance(row, dict):
                raise DatasetFormatError(f"{name} line {lineno}: expected a JSON object (got {type(row).__name__})")
            rows.append((f"{name} line {lineno}", row))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def json_error(exc: json.JSONDecodeError) -> str:
    """The decoder's complaint with its column: `Invalid control character at column 17`
    (`exc.msg` alone ends in "at": the json module appends the position to it)."""
    at = "" if exc.msg.endswith(" at") else " at"
    return f"{exc.msg}{at} column {exc.colno}"
