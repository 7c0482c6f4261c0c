"""The local workspace's ASGI app: a thin route table over the endpoint manager.

Routes (all require ``Authorization: Bearer <token>``)::

    POST   /api/2.0/serving-endpoints                     create
    GET    /api/2.0/serving-endpoints                     list
    GET    /api/2.0/serving-endpoints/{name}              get
    DELETE /api/2.0/serving-endpoints/{name}              delete
    PUT    /api/2.0/serving-endpoints/{name}/config       update config
    PUT    /api/2.0/serving-endpoints/{name}/ai-gateway   AI gateway
    PATCH  /api/2.0/serving-endpoints/{name}/tags         add_tags / delete_tags
    PUT    /api/2.0/serving-endpoints/{name}/rate-limits  (deprecated) rate limits
    GET    /api/2.0/serving-endpoints/get-model-optimization-info/{model}/{version}
    GET    /api/2.1/unity-catalog/catalogs[/{name}]      catalogs (inference table checks)
    POST   /serving-endpoints/{name}/invocations          query (stream=true: SSE)
    POST   /serving-endpoints/chat/completions            OpenAI-style, model = endpoint
    POST   /serving-endpoints/completions
    POST   /serving-endpoints/embeddings

Each route reads its body (``protocol``), hands it to the manager (``manager``, which
validates with ``validation`` and answers through ``render``) in a thread pool, and
returns the answer. A background loop advances endpoint states and heals workers; a GET
of one endpoint advances that endpoint first, so it answers the current state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from ptdeploy.errors import ModelVersionNotFoundError, WorkspaceApiError
from ptdeploy.limits import COLD_START_TIMEOUT_S, MAX_FOUNDATION_MODEL_PAYLOAD_BYTES
from ptdeploy.workspace import render, streaming
from ptdeploy.workspace import store as st
from ptdeploy.workspace.manager import (
    EndpointManager,
    HealingPolicy,
    Worker,
    WorkerFactory,
    stop_all,
)
from ptdeploy.workspace.protocol import (
    BearerAuth,
    FastJSONResponse,
    install_error_handlers,
    invalid,
    json_object,
    unavailable,
)
from ptdeploy.workspace.schemas import (
    TASK_CHAT,
    TASK_COMPLETIONS,
    TASK_EMBEDDINGS,
    InvalidRequestError,
)
from ptdeploy.workspace.validation import (
    Catalog,
    check_model_version_path,
    check_request_task,
    unwrap_request,
)

log = logging.getLogger("ptdeploy.workspace.server")

BASE = "/api/2.0/serving-endpoints"
UC_CATALOGS = "/api/2.1/unity-catalog/catalogs"
OPENAI_ROUTE = {
    TASK_CHAT: "/serving-endpoints/chat/completions",
    TASK_COMPLETIONS: "/serving-endpoints/completions",
    TASK_EMBEDDINGS: "/serving-endpoints/embeddings",
}
BATCHING_ENV = "PTDEPLOY_BATCHING"


def batching_enabled() -> bool:
    """Whether new workers batch concurrent requests: ``$PTDEPLOY_BATCHING`` (default on).

    ``PTDEPLOY_BATCHING=0`` (or ``false``/``off``/``no``) in the environment that starts
    the server makes every worker serve one request at a time: the baseline the serving
    benchmarks compare batching against. Read when a worker is created, in the server
    process.
    """
    return os.environ.get(BATCHING_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def entity_worker_factory(tracking_uri: str, spares: int | None = None) -> WorkerFactory:
    """Real workers: one ``EntityWorker`` process per served entity.

    ``spares`` worker processes (default ``$PTDEPLOY_SPARE_WORKERS``, 1) are kept with
    their imports done, so a new or restarted worker only loads its model.
    """
    from ptdeploy.workspace.worker import EntityWorker, SparePool, spare_workers_wanted

    pool = SparePool(spare_workers_wanted() if spares is None else spares)

    def make(entity: st.ServedEntity) -> Worker:
        return EntityWorker(
            entity.name,
            entity.entity_name,
            entity.entity_version,
            tracking_uri=tracking_uri,
            batching=batching_enabled(),
            spares=pool,
        )

    make.spares = pool  # type: ignore[attr-defined]
    return make


async def invoke(
    manager: EndpointManager, name: str, body: dict[str, Any], route_task: str | None
) -> JSONResponse | StreamingResponse:
    """Answer a query and, when the endpoint's AI Gateway asks for it, record its usage and
    payload (``tables``): answered requests and refused ones alike, with their status."""
    manager.task_of(name)  # 404 for an unknown endpoint, before anything is recorded
    started, clock = time.time(), time.monotonic()
    served: list[str | None] = [None]
    streaming = bool(body.get("stream"))
    # read once per request: most endpoints record nothing, and their requests then skip
    # re-reading the answer (0.13 ms for an embedding) and a thread hop
    tracked = manager.records_requests(name)

    def record(response: dict[str, Any] | None, status: int) -> None:
        if not tracked:
            return
        duration = int((time.monotonic() - clock) * 1000)
        manager.record_request(
            name, served[0], body, response, status, started, duration, streaming
        )

    manager.begin(name)  # in flight: scale to zero waits for its end
    handed_over = False
    try:
        answer = await _answer(manager, name, body, route_task, served, record)
        if isinstance(answer, JSONResponse):
            if tracked:
                await run_in_threadpool(record, json.loads(answer.body), 200)
        else:  # the stream ends the request when it is done (or dropped)
            answer.body_iterator = _ending(answer.body_iterator, lambda: manager.end(name))
            handed_over = True
        return answer
    except WorkspaceApiError as exc:
        if tracked:
            error = {"error_code": exc.error_code, "message": exc.message}
            await run_in_threadpool(record, error, exc.status)
        raise
    finally:
        if not handed_over:
            manager.end(name)


async def _ending(chunks: Any, end: Callable[[], None]) -> Any:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        end()


async def _cold_start(workers: list[Worker], name: str) -> None:
    """Wait until the workers loading after a scale to zero serve (or fail: 503)."""
    deadline = time.monotonic() + COLD_START_TIMEOUT_S
    while any(w.state == "LOADING" for w in workers):
        if time.monotonic() > deadline:
            raise unavailable(
                f"Endpoint '{name}' is scaling up from zero and is not ready after "
                f"{COLD_START_TIMEOUT_S:.0f} s; retry in a moment."
            )
        await asyncio.sleep(0.05)


async def _answer(
    manager: EndpointManager,
    name: str,
    body: dict[str, Any],
    route_task: str | None,
    served_out: list[str | None],
    record: Callable[[dict[str, Any] | None, int], None],
) -> JSONResponse | StreamingResponse:
    """Validate a query, route it to a served entity by traffic split, and answer."""
    task = manager.task_of(name)
    if route_task is not None and route_task != task:
        raise invalid(
            f"Endpoint '{name}' serves {task} requests; this route takes {route_task} "
            f"requests. Use {OPENAI_ROUTE[task]} (or /serving-endpoints/{name}/invocations)."
        )
    request_body = unwrap_request(body, task)
    check_request_task(request_body, task, name)
    loading = await run_in_threadpool(manager.wake, name) if manager.asleep(name) else []
    if loading:  # scaled to zero: this request waits for the cold start
        await _cold_start(loading, name)
    served, worker = manager.pick(name)
    served_out[0] = served
    model = name if route_task is not None else served
    try:
        if request_body.get("stream"):
            return await _stream(worker, request_body, task, model, served, record)
        result = await worker.infer(request_body)
    except InvalidRequestError as exc:
        raise WorkspaceApiError(400, exc.error_code, str(exc)) from exc
    except Exception as exc:
        if worker.state != "READY":  # died or stopped under the request: retriable
            raise unavailable(
                f"Served entity '{served}' of endpoint '{name}' is {worker.state}: "
                f"{worker.error or exc}; retry in a moment (the local workspace restarts "
                "dead workers)."
            ) from exc
        log.exception("inference failed on %s/%s", name, served)
        raise WorkspaceApiError(
            500, "INTERNAL_ERROR", f"Inference failed in served entity '{served}': {exc}"
        ) from exc
    if isinstance(result, dict) and route_task is not None:
        result["model"] = name  # OpenAI routes answer with the endpoint name
    return FastJSONResponse(result, headers={"served-model-name": served})


async def _stream(
    worker: Worker,
    body: dict[str, Any],
    task: str,
    model: str,
    served: str,
    record: Callable[[dict[str, Any] | None, int], None],
) -> StreamingResponse:
    """Answer ``stream=true`` with server-sent events (``ptdeploy.workspace.streaming``).

    The first item is awaited here, before the response starts, so a request the worker
    refuses still gets its 400 (or 503) instead of a broken stream. The whole response
    the worker ends with (the aggregate of the chunks) is what ``record`` gets.
    """

    async def recorded() -> Any:
        async for item in worker.stream(body):
            if isinstance(item, dict):
                await run_in_threadpool(record, item, 200)
            yield item

    events = recorded()
    first = await anext(events)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return StreamingResponse(
        streaming.sse(events, task=task, model=model, include_usage=include_usage, first=first),
        media_type="text/event-stream",
        headers={"served-model-name": served, "Cache-Control": "no-cache"},
    )


def create_app(
    *,
    token: str,
    store: st.EndpointStore,
    catalog: Catalog,
    worker_factory: WorkerFactory,
    poll_interval: float = 0.2,
    clock: Callable[[], float] = time.time,
    healing: HealingPolicy | None = None,
) -> FastAPI:
    """The ASGI app. Collaborators are injected so tests can drive states directly."""
    if not token:
        raise ValueError("the local workspace needs a token")
    manager = EndpointManager(store, catalog, worker_factory, clock=clock, healing=healing)

    async def reconcile_loop() -> None:
        while True:
            try:
                to_stop = manager.reconcile()
                if to_stop:
                    await asyncio.to_thread(stop_all, to_stop)
            except Exception:
                log.exception("reconciling endpoint states failed")
            await asyncio.sleep(poll_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(manager.resume)
        task = asyncio.create_task(reconcile_loop())
        try:
            yield
        finally:
            task.cancel()
            await run_in_threadpool(manager.shutdown)

    app = FastAPI(
        title="ptdeploy local workspace",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.manager = manager
    app.add_middleware(BearerAuth, token=token.encode())
    install_error_handlers(app)

    @app.get(f"{BASE}/get-model-optimization-info/{{model:path}}")
    async def optimization_info(model: str) -> JSONResponse:
        name, version = check_model_version_path(model)
        try:
            desc = await run_in_threadpool(catalog.describe, name, version)
        except ModelVersionNotFoundError as exc:
            raise WorkspaceApiError(404, "RESOURCE_DOES_NOT_EXIST", str(exc)) from exc
        return JSONResponse(desc.response())

    # Unity Catalog catalogs, as GET /api/2.1/unity-catalog/catalogs[/{name}] answers
    # (https://docs.databricks.com/api/workspace/catalogs/get): enough for a client to
    # check that an inference table's catalog exists (w.catalogs.get).
    @app.get(f"{UC_CATALOGS}/{{name}}")
    async def get_catalog(name: str) -> JSONResponse:
        exists = getattr(catalog, "catalog_exists", None)
        if exists is None or not await run_in_threadpool(exists, name):
            raise WorkspaceApiError(
                404, "CATALOG_DOES_NOT_EXIST", f"Catalog '{name}' does not exist."
            )
        return JSONResponse(render.catalog(name))

    @app.get(UC_CATALOGS)
    async def list_catalogs() -> JSONResponse:
        names = getattr(catalog, "catalog_names", None)
        found = await run_in_threadpool(names) if names is not None else []
        return JSONResponse({"catalogs": [render.catalog(n) for n in found]})

    @app.post(BASE)
    async def create(request: Request) -> JSONResponse:
        body = await json_object(request)
        return JSONResponse(await run_in_threadpool(manager.create, body))

    @app.get(BASE)
    async def list_endpoints() -> JSONResponse:
        return JSONResponse(await run_in_threadpool(manager.list))

    @app.get(f"{BASE}/{{name}}")
    async def get(name: str) -> JSONResponse:
        answer, to_stop = await run_in_threadpool(manager.get, name)
        # workers the reconcile retired stop after the answer is sent (a stop can take seconds)
        return JSONResponse(answer, background=BackgroundTask(stop_all, to_stop))

    @app.delete(f"{BASE}/{{name}}")
    async def delete(name: str) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(manager.delete, name))

    @app.put(f"{BASE}/{{name}}/config")
    async def update_config(name: str, request: Request) -> JSONResponse:
        body = await json_object(request)
        return JSONResponse(await run_in_threadpool(manager.update_config, name, body))

    @app.put(f"{BASE}/{{name}}/ai-gateway")
    async def ai_gateway(name: str, request: Request) -> JSONResponse:
        body = await json_object(request)
        return JSONResponse(await run_in_threadpool(manager.put_ai_gateway, name, body))

    @app.patch(f"{BASE}/{{name}}/tags")
    async def tags(name: str, request: Request) -> JSONResponse:
        body = await json_object(request)
        return JSONResponse(await run_in_threadpool(manager.patch_tags, name, body))

    @app.put(f"{BASE}/{{name}}/rate-limits")
    async def rate_limits(name: str, request: Request) -> JSONResponse:
        body = await json_object(request)
        return JSONResponse(await run_in_threadpool(manager.put_rate_limits, name, body))

    @app.post("/serving-endpoints/{name}/invocations")
    async def invocations(name: str, request: Request) -> JSONResponse:
        body = await json_object(request, MAX_FOUNDATION_MODEL_PAYLOAD_BYTES)
        return await invoke(manager, name, body, None)

    def openai_route(task: str):
        async def handler(request: Request) -> JSONResponse:
            body = await json_object(request, MAX_FOUNDATION_MODEL_PAYLOAD_BYTES)
            model = body.pop("model", None)
            if not isinstance(model, str) or not model:
                raise invalid("model is required: the name of the serving endpoint to query.")
            return await invoke(manager, model, body, task)

        return handler

    for task, path in OPENAI_ROUTE.items():
        app.add_api_route(path, openai_route(task), methods=["POST"])

    return app
