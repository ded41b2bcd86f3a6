"""The API's documentation, offline: the OpenAPI schema and Swagger UI served from the files
of the fastapi-offline package (no CDN), behind the API's own authentication."""

from __future__ import annotations

import html
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from .openapi import for_caller, kind_path, openapi_document
from .problems import JSONResponse, http_only

#: Swagger UI's script, style sheet and icon, as the fastapi-offline package ships them.
ASSETS = Path(fastapi_offline.__file__).parent / "static"
#: Where the web tier serves those files (below its mount path).
ASSETS_PATH = "/docs/assets"
#: Swagger UI options: no validator badge (it would fetch from the validator's site).
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}

#: The docs page's headers: its own origin's files only (Swagger UI starts from an inline
#: script), never framed by another page (its requests carry the caller's cookies), never
#: cached, its type never sniffed.
DOCS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


async def _authorize(request: Request) -> None:
    """Where the API needs a principal, so do its docs (401 otherwise)."""
    auth = request.app.state.auth
    await auth.authenticate(request)
    auth.principal(request)


def _root(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def install_docs(api: FastAPI) -> None:
    """Serve `/openapi.json`, `/docs` (Swagger UI) and its files (`/docs/assets/…`).

    The FastAPI app must be made with `openapi_url=None, docs_url=None`: these replace
    FastAPI's own routes, which load Swagger UI from a CDN and ask no credentials.
    """
    # (a WebSocket handshake there: the 404 problem document, as at any path without one)
    api.mount(ASSETS_PATH, http_only(StaticFiles(directory=ASSETS)), name="docs-assets")
    api.openapi = lambda: openapi_document(api)  # type: ignore[method-assign]

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> Response:
        await _authorize(request)
        auth, app = request.app.state.auth, request.app.state.offload
        hidden = {
            kind_path(kind)
            for kind, spec in app.kinds.items()
            if spec.http and not auth.offers(request, spec)
        }
        schema = for_caller(openapi_document(api), hidden)
        if _root(request):  # mounted: the paths are below the mount path
            schema = {**schema, "servers": [{"url": _root(request)}]}
        return JSONResponse(schema)

    @api.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        await _authorize(request)
        root = _root(request)
        page = get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title=html.escape(f"{api.title}: API"),
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
        page.headers.update(DOCS_HEADERS)
        return page
