"""Is the Hugging Face Hub reachable? Asked once, quickly, before any Hub request.

Without a network huggingface_hub retries each request with backoff ("Retrying in 8s [Retry
5/5]", about 24 s) before it fails. A plain TCP connection to the Hub endpoint's host (or to
the HTTPS proxy) answers in well under a second either way, so every Hub lookup asks
`offline_reason()` first and fails at once with "offline" and the fix.

    reason = offline_reason()   # None: go ahead; else "HF_HUB_OFFLINE is set" / "no network: ..."

No torch, no textual; `huggingface_hub` is imported lazily (for its endpoint and offline flag).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 1.5
"""The whole check (name lookup + TCP connect) gives up after this many seconds."""
CACHE_S = 30.0
"""A result is reused this long (the wizard asks for the model, then its tokenizer)."""

_cache: dict[tuple[str, int], tuple[float, str | None]] = {}


def hub_offline_mode() -> bool:
    """`HF_HUB_OFFLINE` as huggingface_hub reads it."""
    try:
        from huggingface_hub import constants

        return bool(constants.is_offline_mode())
    except Exception:  # pragma: no cover - very old huggingface_hub
        return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")


def _endpoint() -> tuple[str, int]:
    """(host, port) a Hub request connects to first: the HTTPS proxy when one is set, else the
    endpoint (`HF_ENDPOINT`, default https://huggingface.co)."""
    try:
        from huggingface_hub import constants

        url = constants.ENDPOINT
    except Exception:  # pragma: no cover
        url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parts = urlsplit(url)
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") if parts.scheme == "https" else None
    if proxy and not _no_proxy(parts.hostname or ""):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return p.hostname or "", p.port or 8080
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _no_proxy(host: str) -> bool:
    skip = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    return any(host.endswith(h.strip().lstrip(".")) for h in skip.split(",") if h.strip())


def _connect(host: str, port: int, result: list[str | None]) -> None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            result.append(None)
    except OSError as exc:
        result.append(f"{host}:{port} cannot be reached ({type(exc).__name__})")


def offline_reason() -> str | None:
    """None when the Hub can be asked; else why not, in a few words. Takes at most
    CONNECT_TIMEOUT_S (the connection runs in a thread: a slow name lookup cannot hold it)."""
    if hub_offline_mode():
        return "HF_HUB_OFFLINE is set"
    host, port = _endpoint()
    now = time.monotonic()
    hit = _cache.get((host, port))
    if hit is not None and now - hit[0] < CACHE_S:
        return hit[1]
    result: list[str | None] = []
    worker = threading.Thread(target=_connect, args=(host, port, result), daemon=True)
    worker.start()
    worker.join(CONNECT_TIMEOUT_S)
    reason = (f"no network: {result[0]}" if result[0] else None) if result else \
        f"no network: {host} did not answer within {CONNECT_TIMEOUT_S:g} s"
    _cache[(host, port)] = (now, reason)
    return reason


def offline_fix(thing: str) -> str:
    """The fix to suggest when `thing` (e.g. `a local folder`) is not in the local Hub cache."""
    if hub_offline_mode():
        return f"unset HF_HUB_OFFLINE to download it, or use {thing}"
    return f"set HF_HUB_OFFLINE=1 to work from the local Hub cache, or use {thing}"
