"""The OpenAPI document (``/openapi.json``) and Swagger UI (``/docs``), served from the package: the vendored
``swagger-ui-dist`` build in ``static/swagger-ui`` (no CDN).

Like every route but ``/v1/health`` they need the token. Open ``/docs?token=TOKEN`` once: the page sets a cookie
(HttpOnly, SameSite=Strict) that its own files and the document then use; "Authorize" in the page takes the
token for the calls you try.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

from anchorcast.server.auth import COOKIE
from anchorcast.server.pages import static_file

_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def mount(app: FastAPI, authorized: list[Any]) -> None:
    @app.get("/openapi.json", dependencies=authorized, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=authorized, include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json", title="anchorcast studio API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
        )
        token = request.query_params.get("token")
        if token:
            page.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return page

    @app.get("/static/swagger-ui/{name}", dependencies=authorized, include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in _ASSETS:
            raise HTTPException(404, f"no such file: {name}")
        return Response(static_file("swagger-ui", name), media_type=_ASSETS[name], headers={"Cache-Control": "max-age=86400"})
