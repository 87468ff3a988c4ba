"""No network: a Hub model id, a Hub dataset and a model's tokenizer answer "offline" at once
(well under 3 s) with the fix, through the real huggingface_hub pointed at a closed port on
this machine (no request leaves it)."""

from __future__ import annotations

import socket
import time

import huggingface_hub.constants
import pytest

from tuneplan.errors import UserError
from tuneplan.services import hub
from tuneplan.services.dataset_preview import RealHubFiles, load_tokenizer, preview_dataset
from tuneplan.services.models import resolve_model

LIMIT_S = 3.0


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE off, the Hub endpoint a loopback port nothing listens on, an empty cache."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: connections are refused
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hub, "_cache", {})
    return port


def _timed(fn):
    start = time.monotonic()
    try:
        return fn(), time.monotonic() - start
    except UserError as exc:
        return exc, time.monotonic() - start


def test_offline_reason_is_fast_and_names_the_endpoint(no_network):
    reason, seconds = _timed(hub.offline_reason)
    assert seconds < LIMIT_S and reason.startswith("no network") and str(no_network) in reason


def test_hub_model_id(no_network):
    err, seconds = _timed(lambda: resolve_model("someone/not-cached-model"))
    assert isinstance(err, UserError) and seconds < LIMIT_S
    message = str(err)
    assert message.startswith("offline") and "HF_HUB_OFFLINE=1" in message and "local folder" in message
    assert "not found" not in message and "\n" not in message


def test_hub_dataset(no_network):
    err, seconds = _timed(lambda: preview_dataset("someone/not-cached-dataset", hub=RealHubFiles()))
    assert isinstance(err, UserError) and seconds < LIMIT_S
    assert "offline" in str(err) and "HF_HUB_OFFLINE=1" in str(err) and "not found" not in str(err)


def test_model_tokenizer(no_network):
    (counter, why), seconds = _timed(lambda: load_tokenizer("someone/not-cached-model", RealHubFiles()))
    assert counter is None and seconds < LIMIT_S
    assert "offline" in why and "HF_HUB_OFFLINE=1" in why and "local model folder" in why


def test_with_hf_hub_offline_the_message_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    err, seconds = _timed(lambda: resolve_model("someone/not-cached-model"))
    assert seconds < LIMIT_S and "HF_HUB_OFFLINE is set" in str(err) and "unset HF_HUB_OFFLINE" in str(err)
