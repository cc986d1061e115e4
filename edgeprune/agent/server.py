"""The agent's HTTP service: ``create_app`` builds it from ``AgentOptions``, ``serve`` runs it with uvicorn.

| endpoint | auth | does |
|---|---|---|
| ``GET /health`` | none | the edgeprune version (is anything there?) |
| ``GET /hardware`` | token | ``hardware_report()``: cores, clocks, ISA, memory, caches, versions |
| ``POST /models`` | token | a model, raw body or one multipart file → ``{"sha256", "size_mb"}`` (413 over the cap) |
| ``POST /measure`` | token | ``MeasureRequest`` → the ``Measurement`` JSON with its samples, plus ``hardware`` |

Security, in the order a request meets it: the token is checked (``hmac.compare_digest``) before anything else,
so a stranger's request is a 401 before its body is read; an upload is capped while it streams and stored only
under its hash; a measurement names a model by hash alone (no endpoint takes a path, so nothing of the device's
file system can be read through the agent); one measurement runs at a time (a second is a 429, not a queue that
would also disturb the timing) in a child process that is killed at the time limit. The generated API
documentation (``/docs``, ``/openapi.json``) is off: it would be one more unauthenticated page.
"""

from __future__ import annotations

import hmac
import socket
import threading
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from edgeprune.agent.hardware import hardware_report
from edgeprune.agent.measuring import run_measurement
from edgeprune.agent.options import AgentOptions
from edgeprune.agent.protocol import MeasureRequest, Refusal
from edgeprune.agent.store import ModelStore
from edgeprune.agent.upload import receive_model
from edgeprune.errors import BadArgumentError
from edgeprune.provenance import versions

OPEN_PATHS = frozenset({"/health"})
MAX_CONNECTIONS = 32
"""Concurrent connections uvicorn serves before answering 503: a device is not a web server."""


class BearerToken:
    """ASGI middleware: every path but ``/health`` needs ``Authorization: Bearer <token>``, checked before the
    endpoint (and so before any body is read or validated); missing or wrong is a 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            response = JSONResponse({"detail": "missing or wrong token — send Authorization: Bearer <token>, the "
                                               "token the agent printed when it started"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)


def create_app(options: AgentOptions) -> FastAPI:
    """The agent's service over the store in ``options.store``; the caller runs it (``serve``, or a test's ASGI
    client)."""
    store = ModelStore(options.store, options.max_upload_bytes)
    measuring = threading.Lock()
    version = versions()["edgeprune"]
    app = FastAPI(title="edgeprune agent", version=version, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BearerToken, token=options.token)

    @app.exception_handler(Refusal)
    async def refused(_request: Request, exc: Refusal) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return JSONResponse({"detail": "the body is not valid JSON — send the MeasureRequest fields as a JSON "
                                           "object"}, status_code=422)
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        return JSONResponse({"detail": f"invalid request{f' field {where!r}' if where else ''}: {first['msg']}"},
                            status_code=422)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"version": version}

    @app.get("/hardware")
    def hardware() -> dict[str, Any]:
        return hardware_report()

    @app.post("/models")
    async def upload(request: Request) -> dict[str, Any]:
        sha256, size = await receive_model(request, store)
        return {"sha256": sha256, "size_mb": round(size / 1e6, 6)}

    @app.post("/measure")
    def measure(request: MeasureRequest) -> dict[str, Any]:
        model = store.path_of(request.sha256)
        if not measuring.acquire(blocking=False):
            raise Refusal(429, "another measurement is running on the device",
                          "retry when it has finished: the agent measures one model at a time, so that timings do "
                          "not disturb each other")
        try:
            measurement = run_measurement(model, request.settings(), options.time_limit_s)
        finally:
            measuring.release()
        return {**measurement, "hardware": hardware_report()}

    return app


def serve(options: AgentOptions) -> None:
    """Run the agent until interrupted. The socket is bound here, before uvicorn starts, so a port in use is one
    clear error (uvicorn would log it and exit 1, the code for "over budget")."""
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    try:
        listening = socket.create_server((options.host, options.port), family=family)
    except OSError as exc:
        raise BadArgumentError(f"cannot listen on {options.host}:{options.port} ({exc.strerror or exc})",
                               "choose another --port, or stop the program using it") from None
    config = uvicorn.Config(create_app(options), log_level="info", server_header=False,
                            limit_concurrency=MAX_CONNECTIONS)
    uvicorn.Server(config).run(sockets=[listening])
