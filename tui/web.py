"""`labq tui --web`: the UI in a browser, for whoever holds the secret in the URL.

textual-serve has no authentication: whoever reaches its port drives the app, which
runs as (and talks to the daemon as) the user who started it. On a shared machine
any local user could open http://127.0.0.1:8000 and act as that user, an admin
included. So, as Jupyter does, a random secret is printed with the URL at start;
the page needs it in its query string, the websocket that drives the app needs it in
its path, and everything but the static assets answers 403 without it. The server
binds loopback unless told otherwise (reach it from a desktop through `ssh -L`).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from textual_serve.server import Server, to_int


class TokenServer(Server):
    def __init__(self, command: str, host: str, port: int, title: str, token: str | None = None) -> None:
        super().__init__(command, host=host, port=port, title=title)
        self.token = token or secrets.token_urlsafe(24)

    def url(self) -> str:
        return f"{self.public_url}/?token={self.token}"

    async def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(self.templates_path))
        app.add_routes(
            [
                web.get("/", self.page, name="index"),
                web.get("/ws/{token}", self.handle_websocket, name="websocket"),
                web.static("/static", self.statics_path, name="static"),
            ]
        )
        app.on_startup.append(self.on_startup)
        app.on_shutdown.append(self.on_shutdown)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/static/"):
            static: web.StreamResponse = await handler(request)  # scripts and fonts hold no secret
            return static
        given = request.match_info.get("token") or request.query.get("token", "")
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            return web.Response(status=403, text="labq: this page needs the token `labq tui --web` printed\n")
        response: web.StreamResponse = await handler(request)
        return response

    async def page(self, request: web.Request) -> web.Response:
        """textual-serve's index page, with the token in the websocket's path."""
        router = request.app.router
        ws = f"{self.public_url}{router['websocket'].url_for(token=self.token)}"
        ws = ("wss:" if self.public_url.startswith("https") else "ws:") + ws.split(":", 1)[1]
        static_url = f"{self.public_url}{router['static'].url_for(filename='/')}".rstrip("/") + "/"
        context = {
            "font_size": to_int(request.query.get("fontsize", "16"), 16),
            "app_websocket_url": ws,
            "config": {"static": {"url": static_url}},
            "application": {"name": self.title},
        }
        response = aiohttp_jinja2.render_template("app_index.html", request, context)
        response.headers["Referrer-Policy"] = "no-referrer"  # the URL holds the secret
        return response

    async def on_startup(self, app: web.Application) -> None:
        self.console.print(f"Serving {self.command!r} on {self.url()}", highlight=False, soft_wrap=True)
        self.console.print("Only this URL opens it (it holds a secret); Ctrl+C to quit", highlight=False)
