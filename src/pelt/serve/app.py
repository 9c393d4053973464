"""The HTTP layer of `pelt serve`: FastAPI endpoints over a `TaskServer`, served by uvicorn.

Every error is a JSON object `{"error": "<one line>"}` with a 4xx status that says what is wrong: malformed
JSON (400), no or a wrong API key (401), an adapter path outside the root or admin without a root (403), an
unknown task (404), a request past its time (408), a name loaded already (409), a body, an input count or a text
over the limits (413), a missing or ill-typed field (422). A 500 would be a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from pelt import __version__
from pelt.errors import PeltError
from pelt.serve.server import AdminRefused, NameTaken, RequestTooLarge, TaskServer, UnknownTask

__all__ = ["base_url", "create_app", "listening_socket", "run", "serving_in_thread"]

ADMIN_TIMEOUT_S = 120  # a load waits for the batch in progress, then reads and checks the adapter


class PredictRequest(BaseModel):
    """Inputs of one task, each with the task's fields (e.g. `sentence`, or `sentence1` and `sentence2`)."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field(description="a loaded task's name (GET /v1/tasks lists them)")
    inputs: list[dict[str, Any]] = Field(description="the inputs, each a JSON object with the task's fields; an "
                                                     "'id' field is echoed back")


class PredictResponse(BaseModel):
    task: str
    answers: list[dict[str, Any]] = Field(description="per input, in order: the label and every label's "
                                                      "probability, the score, the chosen option, or the text")


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="the task name to serve it as")
    path: str = Field(description="the adapter folder, relative to the server's --adapter-root (or under it)")


class ErrorResponse(BaseModel):
    error: str


_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 413, 422)}


class _Metrics:
    """Prometheus metrics of this app (its own registry: several apps in one process do not mix)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("pelt_requests", "HTTP requests answered", ["endpoint", "status"],
                                registry=self.registry)
        self.examples = Counter("pelt_examples", "inputs answered", ["task"], registry=self.registry)
        self.batch = Histogram("pelt_batch_examples", "examples per batch", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.latency = Histogram("pelt_request_seconds", "time from request to answer", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.tasks = Gauge("pelt_tasks", "tasks loaded", registry=self.registry)
        self.busy = Counter("pelt_batch_seconds", "time the model spent answering batches (busy / wall time: "
                                                  "how loaded the server is)", registry=self.registry)

    def batch_done(self, examples: int, seconds: float) -> None:
        self.batch.observe(examples)
        self.busy.inc(seconds)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


async def _from_worker(future: Any, seconds: float) -> Any:
    """The result of a batcher future, waited for at most `seconds` (asyncio.TimeoutError after); a time-out
    leaves the future to the worker (shielded), which finishes or drops it."""
    return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), seconds)


def base_url(sock: socket.socket) -> str:
    """http://host:port of a listening socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_line(error: RequestValidationError) -> tuple[int, str]:
    first = error.errors()[0]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "invalid JSON")
        return 400, f"the body is not valid JSON ({reason}); send a JSON object"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    kind = first.get("type")
    if kind == "missing":
        return 422, f"field '{where}' is missing"
    if kind == "extra_forbidden":
        return 422, f"unknown field '{where}'"
    if kind == "model_attributes_type" or (kind == "dict_type" and not where):
        return 422, "the body must be a JSON object"
    return 422, f"{where or 'body'}: {first.get('msg', 'invalid')}"


class _Guard:
    """ASGI middleware in front of everything: the API key, then the body limit (read whole, before FastAPI
    parses it, so a huge body is refused without being held); every answer counted in the metrics. Plain ASGI,
    not Starlette's BaseHTTPMiddleware, which costs a task and two streams per request."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int, metrics: _Metrics) -> None:
        self.app, self.api_key, self.max_body_bytes, self.metrics = app, api_key, max_body_bytes, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [0]

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self._guarded(scope, receive, counted)
        finally:
            if status[0]:  # a client that left mid-request got no answer to count
                endpoint = getattr(scope.get("route"), "path", "unmatched")
                self.metrics.requests.labels(endpoint, str(status[0])).inc()
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    async def _guarded(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None and not self._authorised(headers):
            response = _error(401, "missing or wrong API key; send it as 'Authorization: Bearer KEY' or "
                                   "'X-API-Key: KEY'")
            response.headers["WWW-Authenticate"] = "Bearer"
            return await response(scope, receive, send)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            return await self._too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left mid-request: nothing to answer
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await self._too_large(scope, receive, send)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        await self.app(scope, replay, send)

    def _authorised(self, headers: dict[str, str]) -> bool:
        given = headers.get("x-api-key")
        if given is None and headers.get("authorization", "").lower().startswith("bearer "):
            given = headers["authorization"][7:].strip()
        key = self.api_key or ""
        return given is not None and hmac.compare_digest(given.encode(), key.encode())

    async def _too_large(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        response = _error(413, f"the request body is over this server's limit of {self.max_body_bytes:,} bytes; "
                               "send fewer or shorter inputs per request")
        await response(scope, receive, send)


def create_app(server: TaskServer) -> Any:
    """The ASGI app answering for `server` (wrapped in the key and body-size guard)."""
    settings = server.settings
    metrics = _Metrics()
    server.on_batch = metrics.batch_done
    app = FastAPI(title="pelt serve", version=__version__,
                  description="Many task adapters on one backbone: predictions batched across tasks, adapters "
                              "loaded and unloaded while serving.")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return _error(*_validation_line(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:  # a bug: said, and the server goes on
        import traceback

        traceback.print_exception(error, file=sys.stderr)
        return _error(500, f"internal error ({type(error).__name__}: {error}); please report it")

    def refused(error: PeltError) -> JSONResponse:
        for kind, status in ((RequestTooLarge, 413), (AdminRefused, 403), (UnknownTask, 404), (NameTaken, 409)):
            if isinstance(error, kind):
                return _error(status, str(error))
        return _error(422, str(error))  # what the input or the adapter holds is wrong

    @app.post("/v1/predict", response_model=None, responses={200: {"model": PredictResponse}, **_ERRORS},
              summary="answers of one task's adapter for a list of inputs")
    async def predict(body: PredictRequest) -> Any:
        try:
            future = server.predict(body.task, body.inputs)
        except PeltError as error:
            return refused(error)
        try:
            answers = await _from_worker(future, settings.request_timeout_s)
        except asyncio.TimeoutError:
            future.abandon()  # its inputs not computed yet are dropped
            return _error(408, f"no answer within {settings.request_timeout_s:g} s (the server is busy); try "
                               "again, or send fewer inputs")
        except PeltError as error:
            return refused(error)
        metrics.examples.labels(body.task).inc(len(answers))
        return JSONResponse({"task": body.task, "answers": answers})  # built by pelt: no second validation

    @app.get("/v1/tasks", summary="the tasks served: name, method, fields, labels, trained parameters")
    async def tasks() -> dict[str, Any]:
        return {"tasks": server.tasks()}

    @app.get("/health", summary="liveness (503 when the model's worker has stopped), and how many tasks are loaded")
    async def health() -> Any:
        if not server.batcher.alive:
            return _error(503, "the model's worker has stopped; restart the server")
        return {"status": "ok", "tasks": len(server.model.tasks), "version": __version__}

    @app.get("/metrics", summary="Prometheus metrics: requests, examples, batch sizes, latency",
             response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        metrics.tasks.set(len(server.model.tasks))
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.post("/admin/tasks", status_code=201, responses={**_ERRORS, 403: {"model": ErrorResponse},
                                                          409: {"model": ErrorResponse}},
              summary="load an adapter from under --adapter-root as a new task, while serving")
    async def load(body: LoadRequest) -> Any:
        try:
            return {"task": await _from_worker(server.load(body.name, body.path), ADMIN_TIMEOUT_S)}
        except PeltError as error:
            return refused(error)
        except asyncio.TimeoutError:
            return _error(408, f"the adapter did not load within {ADMIN_TIMEOUT_S} s; GET /v1/tasks tells whether "
                               "it has since")

    @app.delete("/admin/tasks/{name}", responses=_ERRORS, summary="stop serving a task")
    async def unload(name: str) -> Any:
        try:
            await _from_worker(server.unload(name), ADMIN_TIMEOUT_S)
        except PeltError as error:
            return refused(error)
        except asyncio.TimeoutError:
            return _error(408, f"the task was not unloaded within {ADMIN_TIMEOUT_S} s; GET /v1/tasks tells whether "
                               "it has since")
        return {"removed": name}

    return _Guard(app, settings.api_key, settings.max_body_bytes, metrics)


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound before uvicorn starts, so that a port in use is one clear line and port 0 gets a free port."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise PeltError(f"cannot listen on {host}:{port}: {reason}; pass another --host or --port") from None
    sock.listen(2048)
    return sock


def _uvicorn_server(server: TaskServer, access_log: bool) -> Any:
    import uvicorn

    config = uvicorn.Config(create_app(server), log_level="warning", access_log=access_log,
                            timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def run(server: TaskServer, *, access_log: bool = False, sock: socket.socket | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM (uvicorn's graceful shutdown), then close the server. `sock`: a socket
    `listening_socket` bound already (default: one on the settings' host and port)."""
    sock = sock or listening_socket(server.settings.host, server.settings.port)
    try:
        _uvicorn_server(server, access_log).run(sockets=[sock])
    finally:
        sock.close()
        server.close()


@contextlib.contextmanager
def serving_in_thread(server: TaskServer) -> Iterator[str]:
    """Serve from a background thread (a notebook, a test): yields the base URL; stops on leaving."""
    sock = listening_socket(server.settings.host, server.settings.port)
    uv = _uvicorn_server(server, access_log=False)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not uv.started and thread.is_alive():
        time.sleep(0.01)
    try:
        yield base_url(sock)
    finally:
        uv.should_exit = True
        thread.join(10)
        sock.close()
