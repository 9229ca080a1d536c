"""How the dashboard is served: an ASGI middleware that tells Streamlit's frontend where its
server is, so that a direct load of a page (``/attack``) does not first probe
``/attack/_stcore/health`` and ``/attack/_stcore/host-config`` (two 404s in the browser's
console, Streamlit issue 7074). Plain ASGI (no streamlit, no starlette)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]

_SERVER_PATHS = ("/_stcore/", "/static/", "/media/", "/component/", "/app/static/")
ALIASES = {"/train": "/"}  # the default page lives at the root


def base_url_script(base_path: str = "") -> bytes:
    """The script that sets the frontend's ``BACKEND_BASE_URL`` to the server's root (a value
    a host page already set wins)."""
    path = "/" + base_path.strip("/") + ("/" if base_path.strip("/") else "")
    return (b'<script>window.__streamlit = Object.assign({BACKEND_BASE_URL: '
            b'window.location.origin + "' + path.encode() + b'"}, window.__streamlit || {});'
            b'</script>')


class BackendBaseUrl:
    """Inserts :func:`base_url_script` into every HTML page the server sends. Requests for the
    HTML page are asked for uncompressed, so the page can be edited; everything else passes
    through untouched."""

    def __init__(self, app: ASGIApp, base_path: str = "") -> None:
        self.app = app
        self.script = base_url_script(base_path)
        self.base = "/" + base_path.strip("/") if base_path.strip("/") else ""

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") in \
                {self.base + alias for alias in ALIASES}:
            await self._redirect(scope, send)
            return
        if scope["type"] != "http" or scope.get("method") != "GET" or \
                any(part in scope["path"] for part in _SERVER_PATHS):
            await self.app(scope, receive, send)
            return
        scope = dict(scope, headers=[(k, v) for k, v in scope["headers"]
                                     if k.lower() != b"accept-encoding"])
        start: dict = {}
        body: list[bytes] = []

        async def edited(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            await self._send_page(start, b"".join(body), send)

        await self.app(scope, receive, edited)

    async def _redirect(self, scope: Scope, send) -> None:
        """The default page's own name (``/train``) answered by a redirect to its address, the
        root: the frontend knows it only there, and would show "Page not found"."""
        query = scope.get("query_string", b"")
        target = (self.base + ALIASES[scope["path"].rstrip("/")[len(self.base):]]).encode()
        target += (b"?" + query) if query else b""
        await send({"type": "http.response.start", "status": 307,
                    "headers": [(b"location", target), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_page(self, start: dict, data: bytes, send) -> None:
        headers = list(start.get("headers", []))
        kind = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        if kind.startswith(b"text/html") and b"<head>" in data:
            data = data.replace(b"<head>", b"<head>" + self.script, 1)
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(data)).encode()))
        await send(dict(start, headers=headers))
        await send({"type": "http.response.body", "body": data, "more_body": False})
