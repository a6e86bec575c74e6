"""`labq tui --web`: the UI in a browser, for whoever holds the secret in the URL.

textual-serve has no authentication: whoever reaches its port drives the app, which
runs as (and talks to the daemon as) the user who started it. On a shared machine
any local user could open http://127.0.0.1:8000 and act as that user, an admin
included. So, as Jupyter does, a random secret is printed with the URL at start;
the page needs it in its query string, the websocket that drives the app needs it in
its path, and everything but the static assets answers 403 without it. The server
binds loopback unless told otherwise (reach it from a desktop through `ssh -L`).

The page is labq's own (PAGE), not textual-serve's: every URL in it is relative to
where the browser found the page (through `ssh -L 9000:localhost:8000` the browser is
on port 9000, and textual-serve's absolute `http://127.0.0.1:8000/...` URLs went to
the wrong port), the websocket's URL is built from the page's own location, and the
terminal's font is the one shipped with textual-serve, not one fetched from the
internet (a GPU box often has none, and a secret URL should not make the browser call
out). Block elements (the sparklines' ▁▂▃, the bars' ▏▎▍) are then drawn as cells by
xterm.js from a monospace font that has them, not as whatever a fallback font does.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from textual_serve.server import Server, to_int

PAGE = """<!DOCTYPE html>
<html>
  <head>
    <meta charset="utf-8">
    <meta name="referrer" content="no-referrer">
    <title>{{ title }}</title>
    <link rel="stylesheet" href="static/css/xterm.css">
    <!-- preloaded: the load event, when textual.js measures the terminal's cells, waits for it -->
    <link rel="preload" href="static/fonts/RobotoMono-VariableFont_wght.ttf" as="font" type="font/ttf" crossorigin>
    <style>
      @font-face {
        font-family: "Roboto Mono";
        src: url("static/fonts/RobotoMono-VariableFont_wght.ttf") format("truetype");
        font-weight: 100 700;
      }
      @font-face {
        font-family: "Roboto Mono";
        src: url("static/fonts/RobotoMono-Italic-VariableFont_wght.ttf") format("truetype");
        font-style: italic;
        font-weight: 100 700;
      }
      body { background: #0c181f; margin: 0; }
      .message { display: none; color: #eee; font: 16px "Roboto Mono", monospace; padding: 2em; }
      body.-closed .message { display: block; }
    </style>
    <script src="static/js/textual.js"></script>
  </head>
  <body>
    <div class="message">Session ended: reload the page to start again.</div>
    <div id="terminal" class="textual-terminal" data-font-size="{{ font_size }}"></div>
    <script>
      // textual.js connects at window.onload; tell it where, relative to this page.
      const here = new URL("ws/{{ token }}", window.location.href);
      here.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
      document.getElementById("terminal").dataset.sessionWebsocketUrl = here.href;
    </script>
  </body>
</html>
"""


class TokenServer(Server):
    def __init__(self, command: str, host: str, port: int, title: str, token: str | None = None) -> None:
        super().__init__(command, host=host, port=port, title=title)
        self.token = token or secrets.token_urlsafe(24)

    def url(self) -> str:
        return f"{self.public_url}/?token={self.token}"

    async def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        aiohttp_jinja2.setup(app, loader=jinja2.DictLoader({"labq.html": PAGE}), autoescape=True)
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
        """labq's page (PAGE): relative URLs only, the token in the websocket's path."""
        context = {
            "font_size": to_int(request.query.get("fontsize", "16"), 16),
            "token": self.token,
            "title": self.title,
        }
        response = aiohttp_jinja2.render_template("labq.html", request, context)
        response.headers["Referrer-Policy"] = "no-referrer"  # the URL holds the secret
        response.headers["Cache-Control"] = "no-store"
        return response

    async def on_startup(self, app: web.Application) -> None:
        self.console.print(f"Serving {self.command!r} on {self.url()}", highlight=False, soft_wrap=True)
        self.console.print("Only this URL opens it (it holds a secret); Ctrl+C to quit", highlight=False)
