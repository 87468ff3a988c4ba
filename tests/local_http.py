"""A local HTTP server on 127.0.0.1 that records what it receives (alerts, fake Hub calls)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) for the duration of a `with` block."""

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class Recorder(LoopbackServer):
    """`with Recorder() as hook:` -> `hook.url`, `hook.requests` [(method, path, headers, body)]."""

    def __init__(self, *, delay: float = 0.0, status: int = 200):
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.delay = delay
        self.status = status
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.requests.append(("POST", self.path, dict(self.headers), body))
                if recorder.delay:
                    time.sleep(recorder.delay)
                try:
                    self.send_response(recorder.status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                    pass

            def log_message(self, *args):
                pass

        self.serve(Handler)

    def wait_for(self, predicate, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.requests):
                return True
            time.sleep(0.05)
        return predicate(self.requests)
