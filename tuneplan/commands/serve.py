"""`tuneplan serve`: the same app in a browser tab, through `textual-serve`.

The page and its WebSocket are guarded the way Jupyter guards a notebook server: the URL
printed at start carries a random token (`/?token=...`); opening it sets an HttpOnly,
SameSite=Strict cookie, and the WebSocket that drives the app needs that cookie (or the
token) and, from a browser, an `Origin` equal to the page's own. So a page on another site
cannot open the app in your browser, and someone who reaches a forwarded port without the
URL gets 403.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from tuneplan.commands.arguments import whole_number
from tuneplan.errors import UserError

COOKIE = "tuneplan_serve_token"
"""Cookie name prefix; the port is appended (cookies are per host, not per port)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="localhost", help="interface to listen on (default: localhost)")
    parser.add_argument("--port", type=whole_number("--port", 1, 65535), default=8000,
                        help="TCP port, 1-65535 (default: 8000)")
    parser.add_argument("--attach", metavar="RUN", nargs="?", const="", default=None,
                        help="serve the dashboard of RUN (default: the newest) instead of the wizard")


def check_listen(host: str, port: int) -> None:
    """One-line errors for a host that does not resolve or a port that is taken, before the
    server starts (aiohttp would raise them from inside its event loop)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(f"--host {host[:80]!r} is not an address or a name this machine resolves ({exc}); "
                        "use localhost, 127.0.0.1 or 0.0.0.0") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
            except OSError as exc:
                raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port "
                                "or stop what is using it") from None


def guarded_server(command: str, host: str, port: int, token: str):
    """A textual-serve `Server` whose page and WebSocket need the token and a same-origin
    `Origin` (see the module docstring)."""
    import hmac

    cookie = f"{COOKIE}_{port}"
    from aiohttp import web
    from textual_serve.server import Server

    def allowed(request: web.Request) -> bool:
        given = request.query.get("token") or request.cookies.get(cookie) or ""
        return hmac.compare_digest(given.encode(), token.encode())

    @web.middleware
    async def guard(request: web.Request, handler):
        if request.path.startswith("/static/"):
            return await handler(request)  # scripts, fonts and CSS: no app behind them
        if not allowed(request):
            raise web.HTTPForbidden(text="tuneplan serve: open the URL with the token that `tuneplan serve` printed\n")
        origin = request.headers.get("Origin")
        if request.path == "/ws" and origin is not None and origin != f"{request.scheme}://{request.host}":
            raise web.HTTPForbidden(text=f"tuneplan serve: WebSocket from another origin ({origin}) refused\n")
        response = await handler(request)
        if request.path == "/" and request.query.get("token"):
            response.set_cookie(cookie, token, httponly=True, samesite="Strict", path="/")
        return response

    class GuardedServer(Server):
        async def _make_app(self) -> web.Application:
            app = await super()._make_app()
            app.middlewares.append(guard)
            return app

        async def on_startup(self, app: web.Application) -> None:
            pass  # the command prints the URL with its token

    return GuardedServer(command, host=host, port=port, title="tuneplan")


def run(args: argparse.Namespace) -> int:
    import secrets

    try:
        import textual_serve.server  # noqa: F401
    except ImportError:
        raise UserError("tuneplan serve needs textual-serve: pip install textual-serve") from None
    check_listen(args.host, args.port)
    command = [sys.executable, "-m", "tuneplan"]
    if args.attach is not None:
        command += ["attach"] + ([args.attach] if args.attach else [])
    token = secrets.token_urlsafe(24)
    server = guarded_server(shlex.join(command), args.host, args.port, token)
    print(f"Serving `{' '.join(command[2:]) or 'tuneplan'}` on {server.public_url}/?token={token} "
          "(Ctrl+C stops; the token in the URL is the key: share it only with whoever may use the app)",
          file=sys.stderr, flush=True)
    try:
        server.serve()
    except OSError as exc:  # lost a race for the port since the check
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
