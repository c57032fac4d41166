"""The run inspector: one HTML page and its script and stylesheet, served from the package (no CDN, no build).

The page learns where the API is from the ``<meta name="plait-api">`` this module writes into it, so it works
wherever the API is mounted. A strict Content-Security-Policy allows nothing but this origin's own files.
"""

from __future__ import annotations

import html
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from plait.core.api.problems import problem

__all__ = ["Inspector"]

_ASSETS = {
    "inspector.js": "text/javascript; charset=utf-8",
    "inspector.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _asset(name: str) -> bytes:
    return resources.files("plait.core.api").joinpath("assets", name).read_bytes()


class Inspector:
    """Serves ``/ui`` (the page) and ``/ui/<asset>``."""

    def __init__(self) -> None:
        self._page = _asset("inspector.html").decode()
        self._assets = {name: _asset(name) for name in _ASSETS}

    async def page(self, request: Request) -> Response:
        """The inspector page, pointed at the API it is served by."""
        base = html.escape(request.scope.get("root_path", ""), quote=True)
        body = self._page.replace("{{base}}", base)
        headers = {"content-security-policy": _CSP, "cache-control": "no-cache", "x-content-type-options": "nosniff"}
        return Response(body, media_type="text/html; charset=utf-8", headers=headers)

    async def asset(self, request: Request) -> Response:
        """One of the page's files."""
        name: str = request.path_params["asset"]
        content = self._assets.get(name)
        if content is None:
            return problem(404, "not_found", f"No inspector file '{name}'")
        headers = {"cache-control": "no-cache", "x-content-type-options": "nosniff"}
        return Response(content, media_type=_ASSETS[name], headers=headers)
