"""`tuneplan serve`: a token in the URL, a same-origin WebSocket, and one-line errors for a
bad port or host. A real server process on a free port, spoken to over real HTTP."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("textual_serve")
aiohttp = pytest.importorskip("aiohttp")

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNEPLAN_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.Popen([sys.executable, "-m", "tuneplan", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = proc.stderr.readline()
        url = re.search(r"(http://\S+/\?token=(\S+))", line)
        assert url, line
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield port, url.group(2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _probe(port: int, token: str) -> dict:
    base = f"http://127.0.0.1:{port}"
    out = {}
    async with aiohttp.ClientSession() as anon:
        async with anon.get(base + "/") as r:
            out["index without token"] = r.status
        async with anon.get(base + "/?token=wrong") as r:
            out["index with a wrong token"] = r.status
        try:
            async with anon.ws_connect(base + "/ws", headers={"Origin": base}):
                out["ws without token"] = 101
        except aiohttp.WSServerHandshakeError as exc:
            out["ws without token"] = exc.status
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:  # keeps cookies of IP hosts, as browsers do
        async with browser.get(f"{base}/?token={token}") as r:
            out["index with token"] = r.status
        try:  # the cookie is there, the Origin is a foreign page's
            async with browser.ws_connect(base + "/ws", headers={"Origin": "http://evil.example"}):
                out["ws from a foreign origin"] = 101
        except aiohttp.WSServerHandshakeError as exc:
            out["ws from a foreign origin"] = exc.status
        async with browser.ws_connect(base + "/ws", headers={"Origin": base}) as ws:
            out["ws same origin with cookie"] = 101
            await ws.close()
    return out


def test_serve_needs_the_token_and_the_same_origin(served):
    port, token = served
    assert len(token) >= 24
    assert asyncio.run(_probe(port, token)) == {
        "index without token": 403, "index with a wrong token": 403, "ws without token": 403,
        "index with token": 200, "ws from a foreign origin": 403, "ws same origin with cookie": 101}


@pytest.mark.parametrize("argv, words", [
    (["--port", "-1"], "--port"), (["--port", "99999"], "--port"), (["--port", "0"], "--port"),
    (["--port", "http"], "--port"), (["--host", "no such host!"], "--host"),
])
def test_bad_port_or_host_is_one_line(argv, words, capsys):
    from tuneplan.cli import main

    with pytest.raises(SystemExit) as exit_:
        rc = main(["serve", *argv])
        raise SystemExit(rc)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and words in err, err


def test_port_in_use_is_one_line(capsys):
    from tuneplan.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["serve", "--host", "127.0.0.1", "--port", str(s.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "in use" in err, err
