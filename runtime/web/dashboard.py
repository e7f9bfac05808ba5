"""The dashboard: `/` and its static files, plain HTML, CSS and JavaScript shipped in `runtime/web/static/`.

The page loads without a token (it holds no data); every API call and the `/ws` connection it
makes carry the token the operator types in, kept in the tab's sessionStorage.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
# Nothing from elsewhere: scripts, styles, images and connections stay on this origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={**HEADERS, "Cache-Control": "no-cache"})


async def static_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the same headers on the page's scripts and styles."""
    if request.path.startswith("/dashboard/"):
        response.headers.update(HEADERS)
        response.headers["Cache-Control"] = "no-cache"  # revalidated by Last-Modified: never stale after an upgrade


def setup_dashboard(app: web.Application) -> None:
    """`GET /` (the page) and `GET /dashboard/*` (its scripts and styles)."""
    app.router.add_get("/", index)
    app.router.add_static("/dashboard/", STATIC, name="dashboard", append_version=False)
    app.on_response_prepare.append(static_headers)
