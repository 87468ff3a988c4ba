"""Dataset loading for a run: file or Hub id -> trl-shaped `datasets.Dataset`s.

Rows are converted by `tuneplan.dataset_formats` (chat-like rows -> conversational
prompt/completion, `text` rows -> language modelling). Samples longer than the sequence
length are counted and, per `data.overlong`, dropped or left for trl to truncate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tuneplan.config import RunConfig
from tuneplan.dataset_formats import (
    FORMAT_SAMPLE_ROWS, DatasetFormatError, assistant_turns, detect_format_of_rows, is_local_source,
    read_local_rows, row_to_conversation, row_to_training_example,
)

log = logging.getLogger("tuneplan.training")

FALLBACK_TEMPLATE_NAME = "tuneplan-plain"
# Used when the base model's tokenizer has no chat template: plain-text headers, the turn ends
# with the tokenizer's eos token so the model learns to stop.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Assistant:\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{{ '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)


@dataclass(frozen=True)
class PreparedData:
    train: Any
    """`datasets.Dataset` of training examples."""
    eval: Any | None
    """Held-out examples (`None` without an eval split)."""
    format: str
    """Detected (or configured) row format."""
    examples: int
    """Rows used (train + eval) after dropping over-long ones."""
    dropped_too_long: int
    truncated: int
    multi_turn: int = 0
    """Rows with more than one assistant turn."""
    every_turn: bool = False
    """Whether rows are whole conversations trained on every assistant turn (else prompt/completion)."""


def _raw_rows(config: RunConfig) -> list[tuple[str, dict[str, Any]]]:
    d = config.data
    if is_local_source(d.source) and not d.source.lower().endswith(".parquet"):
        return read_local_rows(d.source, limit=d.max_samples)
    import datasets

    try:
        if d.source.lower().endswith(".parquet"):
            ds = datasets.Dataset.from_parquet(d.source)
        else:
            ds = datasets.load_dataset(d.source, split=d.split)
    except FileNotFoundError as exc:
        raise DatasetFormatError(f"dataset {d.source!r} not found ({exc})") from None
    if d.max_samples is not None:
        ds = ds.select(range(min(d.max_samples, len(ds))))
    return [(f"{d.source} row {i + 1}", row) for i, row in enumerate(ds)]


def ensure_chat_template(tokenizer, notes: list[str]) -> None:
    """Give a tokenizer without a chat template the fallback one, noted in the run log."""
    if getattr(tokenizer, "chat_template", None):
        return
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    notes.append(f"the tokenizer has no chat template; using tuneplan's fallback template "
                 f"'{FALLBACK_TEMPLATE_NAME}' (### User / ### Assistant headers)")


def can_mask_assistant_turns(tokenizer) -> bool:
    """Whether trl can train on every assistant turn with this tokenizer's chat template: the
    template has `{% generation %}` markers or trl ships a patched training version of it
    (`trl.chat_template_utils.get_training_chat_template`)."""
    from trl.chat_template_utils import get_training_chat_template

    try:
        get_training_chat_template(tokenizer)
    except Exception:  # trl raises for templates it does not know
        return False
    return True


def _length(tokenizer, example: dict[str, Any]) -> int:
    if "text" in example:
        return len(tokenizer(example["text"]).input_ids) + 1  # + eos appended by trl
    messages = example["messages"] if "messages" in example else example["prompt"] + example["completion"]
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def read_rows(config: RunConfig) -> list[tuple[str, dict[str, Any]]]:
    """The raw `(location, row)` pairs of `data.source` (`data.split` of a Hub dataset, the first
    `data.max_samples`), as `prepare_data` reads them."""
    return _raw_rows(config)


def prepare_data(config: RunConfig, tokenizer, notes: list[str],
                 rows: list[tuple[str, dict[str, Any]]] | None = None) -> PreparedData:
    """Load, convert, count over-long samples and split. Bad data raises `UserError`.
    `rows`: the source's rows already read by `read_rows(config)` (not read again)."""
    import datasets

    rows = _raw_rows(config) if rows is None else rows
    source = config.data.source
    if not rows:
        raise DatasetFormatError(f"dataset {source!r} has no rows; add examples or pick another file")
    if config.data.format == "auto":
        fmt = detect_format_of_rows([row for _, row in rows[:FORMAT_SAMPLE_ROWS]], source=source)
    else:
        fmt = config.data.format
    examples = [row_to_training_example(row, fmt, where=where) for where, row in rows]
    multi_turn = every_turn = 0
    if fmt != "text":
        ensure_chat_template(tokenizer, notes)
        multi_turn = sum(1 for _, row in rows if assistant_turns(row, fmt) > 1)
        if multi_turn and config.data.completion_only_loss:
            if can_mask_assistant_turns(tokenizer):
                every_turn = True
                examples = [row_to_conversation(row, fmt, where=where) for where, row in rows]
                notes.append(f"{multi_turn} conversation(s) with several assistant turns: training on every "
                             "assistant turn (assistant-only loss)")
            else:
                notes.append(f"{multi_turn} conversation(s) with several assistant turns: the chat template cannot "
                             "mark assistant turns for trl, so only the LAST assistant turn of each is trained "
                             "(earlier turns are context)")

    limit = config.setup.seq_len
    lengths = [_length(tokenizer, ex) for ex in examples]
    too_long = sum(1 for n in lengths if n > limit)
    dropped = truncated = 0
    if too_long and config.data.overlong == "drop":
        examples = [ex for ex, n in zip(examples, lengths) if n <= limit]
        dropped = too_long
        if not examples:
            raise DatasetFormatError(f"every example of {source!r} is longer than seq_len={limit} tokens; "
                                     "raise the sequence length or use data.overlong = \"truncate\"")
    elif too_long and not config.setup.packing:
        truncated = too_long
    elif too_long:
        truncated = too_long  # bfd packing truncates overflowing sequences too

    ds = datasets.Dataset.from_list(examples)
    eval_ds = None
    frac = config.data.eval_fraction
    if frac > 0 and len(ds) >= 2:
        n_eval = max(1, int(round(len(ds) * frac)))
        split = ds.train_test_split(test_size=n_eval, seed=config.training.seed, shuffle=True)
        ds, eval_ds = split["train"], split["test"]
    return PreparedData(train=ds, eval=eval_ds, format=fmt, examples=len(examples),
                        dropped_too_long=dropped, truncated=truncated, multi_turn=multi_turn,
                        every_turn=bool(every_turn))
