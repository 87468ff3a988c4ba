"""Format detection and row conversion (pure, no datasets import)."""

from __future__ import annotations

import pytest

from tuneplan.errors import UserError
from tuneplan.dataset_formats import (
    FORMATS, detect_format, detect_format_of_rows, preview_rows, row_to_training_example,
)

ROWS = {
    "messages": {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
                              {"role": "assistant", "content": "4"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    "prompt_completion": {"prompt": "2+2?", "completion": "4"},
    "alpaca": {"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"},
    "text": {"text": "2+2=4"},
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_is_detected_and_converted(fmt):
    row = ROWS[fmt]
    assert detect_format_of_rows([row]) == fmt
    example = row_to_training_example(row, fmt)
    if fmt == "text":
        assert example == {"text": "2+2=4"}
    else:
        assert example["completion"] == [{"role": "assistant", "content": "4"}]
        assert example["prompt"][-1]["role"] == "user"


def test_alpaca_input_joins_the_instruction():
    example = row_to_training_example(ROWS["alpaca"], "alpaca")
    assert example["prompt"] == [{"role": "user", "content": "Add the numbers.\n\n2 and 2"}]


def test_unknown_columns_name_found_and_accepted():
    with pytest.raises(UserError) as info:
        detect_format(["question", "answer"], source="qa.jsonl")
    msg = str(info.value)
    assert "qa.jsonl" in msg and "question, answer" in msg
    for cols in ("messages", "prompt, completion", "instruction, output", "conversations", "text"):
        assert cols in msg


def test_empty_rows_and_bad_turns_are_user_errors():
    with pytest.raises(UserError, match="no rows"):
        detect_format_of_rows([], source="empty.jsonl")
    with pytest.raises(UserError, match="no assistant turn"):
        row_to_training_example({"messages": [{"role": "user", "content": "hi"}]}, "messages", where="row 7")
    with pytest.raises(UserError, match=r"row 3: `conversations\[0\].from` is 'alien'"):
        row_to_training_example({"conversations": [{"from": "alien", "value": "x"}]}, "sharegpt", where="row 3")


def test_preview_gives_chats():
    fmt, chats = preview_rows([ROWS["text"], ROWS["text"]], limit=1)
    assert fmt == "text" and chats == [[{"role": "user", "content": "2+2=4"}]]


def test_module_imports_no_datasets():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import tuneplan.dataset_formats, sys;"
                          "print('datasets' in sys.modules, 'torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_overlong_samples_are_counted_and_dropped(tiny_model):
    from dataclasses import replace

    from tiny_runs import tiny_config
    from transformers import AutoTokenizer

    from tuneplan.training.data import prepare_data

    tok = AutoTokenizer.from_pretrained(tiny_model)
    config = tiny_config(tiny_model)
    config = replace(config, setup=replace(config.setup, seq_len=12))
    truncated = prepare_data(config, tok, [])
    assert truncated.truncated > 0 and truncated.dropped_too_long == 0 and truncated.examples == 400
    dropped = prepare_data(replace(config, data=replace(config.data, overlong="drop")), tok, [])
    assert dropped.dropped_too_long == truncated.truncated and dropped.examples == 400 - dropped.dropped_too_long
    assert len(dropped.train) + len(dropped.eval) == dropped.examples


def test_base_tokenizer_without_template_gets_the_named_fallback(tiny_model):
    from transformers import AutoTokenizer

    from tuneplan.training.data import FALLBACK_TEMPLATE_NAME, ensure_chat_template

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = None
    notes: list[str] = []
    ensure_chat_template(tok, notes)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                   tokenize=False)
    assert text == "### User:\nhi\n\n### Assistant:\nyo</s>\n\n" and FALLBACK_TEMPLATE_NAME in notes[0]


def _multi_turn_config(tiny_model, tmp_path):
    import json
    from dataclasses import replace

    from tiny_runs import tiny_config

    turns = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5"},
             {"role": "user", "content": "Double 4."}, {"role": "assistant", "content": "8"}]
    path = tmp_path / "multi.jsonl"
    path.write_text("".join(json.dumps({"messages": turns}) + "\n" for _ in range(8)))
    config = tiny_config(tiny_model)
    return replace(config, data=replace(config.data, source=str(path), eval_fraction=0.0))


def _trained_text(config, tokenizer, data):
    from tuneplan.training.modeling import load_for_training
    from tuneplan.training.sft import build_trainer

    model, _, _ = load_for_training(config.model.source, config.setup, device="cpu")
    example = build_trainer(config, model, tokenizer, data.train, None, []).train_dataset[0]
    return tokenizer.decode([i for i, label in zip(example["input_ids"], example["labels"]) if label != -100])


def test_multi_turn_conversations_train_every_assistant_turn(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from tuneplan.training.data import prepare_data

    config = _multi_turn_config(tiny_model, tmp_path)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    notes: list[str] = []
    data = prepare_data(config, tok, notes)
    assert data.every_turn and data.multi_turn == 8 and "every assistant turn" in notes[-1]
    assert _trained_text(config, tok, data) == "5</s>8</s>"


def test_multi_turn_without_assistant_markers_trains_the_last_turn_and_says_so(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from tuneplan.training.data import prepare_data

    config = _multi_turn_config(tiny_model, tmp_path)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    notes: list[str] = []
    data = prepare_data(config, tok, notes)
    assert not data.every_turn and "only the LAST assistant turn" in notes[-1]
    assert _trained_text(config, tok, data) == "8</s>\n"  # the completion: the last turn as rendered
