"""The FastAPI application: ``create_app(settings)`` = the JSON API (``service.api``; OpenAPI at
``/openapi.json``), the browser review screen (``service.ui``; its script and stylesheet from
``service/static``) and, with ``embedded_worker``, a worker thread running the analysis jobs.

Every response carries a strict Content-Security-Policy (scripts, styles and images from this
server only; no inline script), so text that reaches a page can never run as script.
"""

from __future__ import annotations

import contextlib
import threading

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from leukodx.errors import LeukodxError
from leukodx.service.config import Settings
from leukodx.service.db import make_engine, session_factory

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                               "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 with one line. A declared
    Content-Length over the limit is refused before anything is read; a body that does not say its
    length (chunked) is cut off as soon as it passes the limit, and nothing of it is stored."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body over the {self.limit // 2 ** 20} MB limit; send fewer or smaller files per request"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await _refuse(send, message)
        seen, over = 0, False

        async def counted():
            nonlocal seen, over
            event = await receive()
            if event["type"] == "http.request":
                seen += len(event.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge()
            return event

        async def guarded(event):
            if not over:
                await send(event)
            elif event["type"] == "http.response.start":  # the app's error reply to the cut body
                await _refuse(send, message)

        try:
            await self.app(scope, counted, guarded)
        except _TooLarge:
            pass


class _TooLarge(Exception):
    pass


async def _refuse(send, message: str) -> None:
    import json

    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings, embedded_worker: bool = False) -> FastAPI:
    from leukodx.service import api, ui
    from leukodx.service.auth import LoginLimiter

    settings.prepare()
    engine = make_engine(settings.database_url)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        from leukodx.service.storage import sweep_partials

        sweep_partials(settings.uploads)
        stop = threading.Event()
        if embedded_worker:  # one command on one machine: the server runs jobs too
            from leukodx.service.jobs import run_forever

            threading.Thread(target=run_forever, args=(app.state.factory, settings, stop), daemon=True).start()
        yield
        stop.set()
        engine.dispose()

    app = FastAPI(title="leukodx review service", version="1", lifespan=lifespan)
    app.state.settings, app.state.factory, app.state.login_limiter = settings, session_factory(engine), LoginLimiter()
    app.include_router(api.router)
    app.include_router(ui.router)
    app.mount("/static", StaticFiles(directory=ui.HERE / "static"), name="static")
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(LeukodxError)
    async def _user_error(_request: Request, exc: LeukodxError):
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_400_BAD_REQUEST)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    return app
