"""`chat` output: whole characters only at the end of a reply, and no library FutureWarnings."""

from __future__ import annotations

import warnings

import pytest

from tuneplan.training.inference import _quiet, decode_whole_characters


@pytest.fixture(scope="module")
def tokenizer():
    from tuneplan.training.tiny import build_tokenizer

    return build_tokenizer(512)  # the tiny model's byte-level BPE


def test_a_character_cut_at_the_last_token_is_dropped_not_replaced(tokenizer):
    ids = tokenizer.encode("café ok €", add_special_tokens=False)
    whole = decode_whole_characters(tokenizer, ids)
    assert whole == "café ok €"
    for cut in range(1, 3):  # "€" is 3 bytes: stop after one or two of its byte tokens
        partial = ids[:-cut]
        assert "\ufffd" in tokenizer.decode(partial)  # what a plain decode prints
        text = decode_whole_characters(tokenizer, partial)
        assert "\ufffd" not in text and text.startswith("café ok")


def test_invalid_bytes_inside_a_reply_are_replaced(tokenizer):
    euro = tokenizer.encode("€", add_special_tokens=False)
    ids = euro[:1] + tokenizer.encode(" fine", add_special_tokens=False)  # a lone lead byte, then text
    text = decode_whole_characters(tokenizer, ids)
    assert text.endswith(" fine") and "\ufffd" in text  # valid UTF-8 out, the bad byte shown as such
    text.encode("utf-8")


def test_library_future_warnings_are_silenced_ours_are_not():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        _quiet()
        warnings.warn_explicit("old API", FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("ours", UserWarning, "chat.py", 1, module="tuneplan.commands.chat")
    assert [str(w.message) for w in seen] == ["ours"]
