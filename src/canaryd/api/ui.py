"""The operator's console (/ui) and the API docs (/docs, /redoc), all served from files in the package.

Nothing is fetched from another host: the console's own script and style, and pinned copies of uPlot,
Swagger UI and ReDoc (src/canaryd/ui/vendor/README.md) are served under /ui/static.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
STATIC = "/ui/static"

router = APIRouter(include_in_schema=False)

#: Every page is same-origin only: no script, style, font, image or connection to another host.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'self'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@router.get("/ui")
async def console() -> FileResponse:
    """The console's single page; its script talks to /api/v1 with the token the operator enters."""
    return FileResponse(UI_DIR / "index.html", headers={**_HEADERS, "Cache-Control": "no-cache"})


@router.get("/ui/")
async def console_slash() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="canaryd API",
        swagger_js_url=f"{STATIC}/vendor/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC}/vendor/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{STATIC}/favicon.svg",
        oauth2_redirect_url="/docs/oauth2-redirect",
        # validatorUrl: Swagger UI would otherwise send the spec to validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False, "tryItOutEnabled": False},
    )
    return HTMLResponse(page.body, headers=_HEADERS)


@router.get("/docs/oauth2-redirect")
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    page = get_redoc_html(
        openapi_url="/openapi.json",
        title="canaryd API",
        redoc_js_url=f"{STATIC}/vendor/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{STATIC}/favicon.svg",
        with_google_fonts=False,
    )
    return HTMLResponse(page.body, headers=_HEADERS)


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(STATIC, StaticFiles(directory=UI_DIR), name="ui-static")
