"""The dashboard at /: static files shipped in the package (serve/static/), plain JavaScript and SVG, no
CDN and no build step. The page calls the same API as any client (/v1/*), with the bearer token the
user types in (kept in sessionStorage) when the server wants one. Served with a Content-Security-Policy
that allows only this origin's scripts, styles and API: the page has no inline script."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Response

STATIC = resources.files("fusioncast.serve") / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _files() -> dict[str, tuple[bytes, str]]:
    """name -> (content, media type) of every file shipped: only these are served (no path from a client
    reaches the file system)."""
    out = {}
    for entry in STATIC.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in TYPES:
            out[entry.name] = (entry.read_bytes(), TYPES[suffix])
    return out


def add_dashboard(app: FastAPI) -> None:
    files = _files()
    headers = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "cache-control": "no-cache",
               "referrer-policy": "no-referrer"}

    def serve(name: str) -> Response:
        if name not in files:
            return Response(b'{"detail": "not found", "series": null, "field": null}', 404,
                            media_type="application/json")
        content, media_type = files[name]
        return Response(content, headers=headers, media_type=media_type)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return serve("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        return serve(name)
